"""The decision commands from Python, with the command line's option names:
``quantscope.judge`` (``show --margin``), ``quantscope.compare`` (``compare RUN --pair A,B``)
and ``quantscope.recommend`` (``recommend``). ``run`` is a stored run's id (or "latest") or
the :class:`~quantscope.results.RunReport` that ``quantscope.run`` returned.

>>> import quantscope
>>> rec = quantscope.recommend("latest", max_ppl_increase="2%")  # doctest: +SKIP
>>> print(rec.code)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from quantscope.config import Budget, parse_margins, parse_percent
from quantscope.errors import UserError
from quantscope.quiet import captured
from quantscope.results import RunReport

if TYPE_CHECKING:  # the statistics (scipy) are imported when a decision is asked for
    from quantscope.decide import Decision, Recommendation
    from quantscope.store import Store

Run = str | RunReport


def _opened(run: Run, store: str | os.PathLike[str] | None) -> tuple[Store, RunReport]:
    from quantscope.runner import default_store
    from quantscope.store import Store

    if isinstance(run, RunReport) and store is None:
        store = run.provenance.get("store") or None
    path = os.fspath(store) if store else default_store()
    if not os.path.isfile(path):
        raise UserError(
            f"No results database at '{path}'; run quantscope.run first or pass store=."
        )
    opened = Store(path)
    return opened, run if isinstance(run, RunReport) else opened.report(run)


def judge(run: Run = "latest", margin: str | None = None,
          store: str | os.PathLike[str] | None = None) -> Decision:  # fmt: skip
    """Each config of ``run`` against the baseline at ``margin`` (``"ppl=1%,kl=0.01"``), the
    groups, the noise floor and the recommendation within that margin."""
    from quantscope.decide import decide

    with captured():
        opened, report = _opened(run, store)
        with opened:
            return decide(opened, report, parse_margins(margin))


def compare(run: Run = "latest", pair_: Iterable[str] | str | None = None, *,
            store: str | os.PathLike[str] | None = None, **kw: Any) -> Any:  # fmt: skip
    """Two configs of one run token by token: a DataFrame with Δ ± se, p and the 95% CI per
    metric (``pair=("bnb-nf4", "hqq[bits=4,group=64]")`` or ``"A,B"``)."""
    import pandas as pd

    from quantscope.decide import evidence, pair

    chosen = kw.pop("pair", pair_)
    if kw:
        raise UserError(
            f"quantscope.compare has no option '{next(iter(kw))}'; it takes run, pair, store."
        )
    from quantscope.config import split_config_list

    found = split_config_list(chosen) if isinstance(chosen, str) else list(chosen or [])
    names = [n.strip() for n in found]
    if len(names) != 2:
        raise UserError("quantscope.compare takes pair=('A', 'B'): two configs of the run.")
    with captured():
        opened, report = _opened(run, store)
        with opened:
            return pd.DataFrame(pair(evidence(opened, report), names[0], names[1]))


def recommend(run: Run = "latest", max_ppl_increase: str | float | None = None,
              max_mb: float | None = None, min_decode_tps: float | None = None,
              margin: str | None = None, prefer: str = "size",
              store: str | os.PathLike[str] | None = None) -> Recommendation:  # fmt: skip
    """The config to ship under the budget (see ``quantscope recommend --help``); its
    ``reason``, ``runners_up`` and ``code``."""
    from quantscope.decide import decide

    budget = Budget(parse_percent(max_ppl_increase, "max_ppl_increase"), max_mb, min_decode_tps,
                    parse_margins(margin), prefer)  # fmt: skip
    with captured():
        opened, report = _opened(run, store)
        with opened:
            return decide(opened, report, parse_margins(margin), budget).recommendation
