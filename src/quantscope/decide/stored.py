"""Decisions over a stored run, as the API and the command line ask for them: a
:class:`DecisionSpec` (which run, which store, the margins, the budget, the pair) built by
``specs`` from the options both front doors share, then :func:`judge`, :func:`compare` or
:func:`recommend` on it.

>>> DecisionSpec(margins=Margins(kl=0.01)).margins.text()
'kl=0.01'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantscope.config import Budget, Margins
from quantscope.decide.analysis import evidence, pair
from quantscope.decide.recommend import Recommendation
from quantscope.decide.summary import Decision, decide
from quantscope.errors import UserError
from quantscope.results import RunReport
from quantscope.store import Store, open_existing


@dataclass(frozen=True, kw_only=True)
class DecisionSpec:
    """A stored run (its id, ``latest``, or the report ``quantscope.run`` returned), the
    results database it is in (None: the report's own, else the default), and what it is
    judged against."""

    run: str | RunReport = "latest"
    store: str | None = None
    margins: Margins = field(default_factory=Margins)
    budget: Budget | None = None  # None: the smallest config within the margins
    pair: tuple[str, str] | None = None  # two configs of the run, for compare

    def open(self) -> tuple[Store, RunReport]:
        """The store and the run's report (the one opener of a stored run)."""
        store = self.store
        if isinstance(self.run, RunReport) and store is None:
            store = self.run.provenance.get("store") or None
        opened = open_existing(store)
        return opened, self.run if isinstance(self.run, RunReport) else opened.report(self.run)


def judge(spec: DecisionSpec) -> Decision:
    """Each config of the run against the baseline at the margins, the groups, the noise
    floor and the recommendation within those margins (or the budget)."""
    opened, report = spec.open()
    with opened:
        return decide(opened, report, spec.margins, spec.budget)


def recommend(spec: DecisionSpec) -> Recommendation:
    """The config to ship under the budget: its reason, runners-up and loading code."""
    return judge(spec).recommendation


def compare(spec: DecisionSpec) -> list[dict[str, Any]]:
    """Two configs of one run token by token: per metric Δ ± se, p and the 95% CI."""
    if spec.pair is None:
        raise UserError("compare takes pair=('A', 'B'): two configs of the run.")
    opened, report = spec.open()
    with opened:
        return pair(evidence(opened, report), *spec.pair)


SPREAD = (("p5", 5), ("q1", 25), ("median", 50), ("q3", 75), ("p95", 95), ("p99", 99))


def kl_spread(spec: DecisionSpec) -> dict[str, dict[str, float]]:
    """Per config with per-token values, the quantiles of its per-token KL (5, 25, 50, 75,
    95, 99th percentile), its mean and max: what the report's box per config draws."""
    opened, report = spec.open()
    with opened:
        found = evidence(opened, report)
    out = {}
    for config, tv in found.token_values.items():
        if tv is not None and len(tv.kl):
            q = np.percentile(tv.kl, [p for _, p in SPREAD])
            out[config] = {
                **{name: float(v) for (name, _), v in zip(SPREAD, q, strict=True)},
                "mean": float(tv.kl.mean()),
                "max": float(tv.kl.max()),
            }
    return out
