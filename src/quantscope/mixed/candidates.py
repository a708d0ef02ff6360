"""The candidates a search chooses among: the units in order of sensitivity, and for each count
kept in the fallback precision (and each KV cache), the emulated accuracy and total bytes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from quantscope.config import (
    Budget,
    QuantConfig,
    WeightConfig,
)
from quantscope.config.kv import KvSpec
from quantscope.mixed.sensitivity import Bench, SensitivitySpec
from quantscope.results import SensitivityStudy, Unit


def order_units(study: SensitivityStudy) -> list[Unit]:
    """Units in the order the search keeps them: most KL saved per MB kept first."""
    ranked = {r["unit"]: r for r in study.ranking()}
    score = "gain" if "all-but" in study.settings["modes"] else "only_kl"

    def value(unit: Unit) -> float:
        benefit = max(float(ranked[unit.name].get(score, 0.0)), 0.0)
        return benefit / max(study.costs[unit.name], 1e-9)

    return sorted(study.units, key=value, reverse=True)


class Candidates:
    """Calibration measurements of "the first k units of ``order`` kept" (through ``kv``'s
    cache when given: then ``total_mb`` adds its MB at ``context`` tokens), cached by k."""

    def __init__(
        self,
        b: Bench,
        study: SensitivityStudy,
        order: list[Unit],
        kv: KvSpec | None = None,
        context: int = 0,
    ) -> None:
        self.bench, self.order, self.kv = b, order, kv
        self.cache_mb = b.cache_mb(kv, context)
        self.found: dict[int, dict[str, Any]] = {}
        n = len(order)
        if kv is None:  # the study measured both ends already (without a cache)
            for k, key in ((0, ("*", "all")), (n, ("*", "none"))):
                self.found[k] = self._row(k, study.rows[key])

    def _row(self, k: int, measured: dict[str, float]) -> dict[str, Any]:
        kept = {u.name for u in self.order[:k]}
        weights = self.bench.estimate_mb(kept)
        kv = self.kv.name if self.kv else ""
        return {
            "kept": k,
            **measured,
            "estimated_mb": weights,
            "kv": kv,
            "cache_mb": self.cache_mb,
            "total_mb": weights + self.cache_mb,
        }

    def get(self, k: int) -> dict[str, Any]:
        if k not in self.found:
            self.found[k] = self._row(k, self.bench.measure(self.order[k:], self.kv))
        return self.found[k]

    def smallest(self, budget: Budget, scale: float) -> int | None:
        """Smallest k meeting the accuracy budget (bisection; KL falls as k grows), or None."""
        n = len(self.order)
        if budget.excess(self.get(n)["kl"], self.get(n)["dppl_pct"], scale) > 1:
            return None
        lo, hi = -1, n  # lo fails (or is before 0), hi meets
        while hi - lo > 1:
            mid = (lo + hi) // 2
            row = self.get(mid)
            if budget.excess(row["kl"], row["dppl_pct"], scale) <= 1:
                hi = mid
            else:
                lo = mid
        return hi

    def spread(self) -> None:
        """Measure k = 1, 2, 4, … so the front is drawn across the whole range."""
        k = 1
        while k < len(self.order):
            self.get(k)
            k *= 2


def chosen_config(study: SensitivitySpec, order: list[Unit], k: int, label: str) -> QuantConfig:
    """The config keeping the first ``k`` units of ``order`` in the fallback precision."""
    base = study.config
    assert isinstance(base, WeightConfig)  # a study needs an emulation: only weight configs
    dtype = study.fallback if study.fallback not in (None, study.model.dtype) else base.dtype
    skip = (*base.skip, *(u.name for u in order[:k]))
    return replace(base, skip=skip, dtype=dtype, label=label)
