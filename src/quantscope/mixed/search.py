"""Search: the smallest mix of quantized and fallback-precision units meeting a budget.

Candidates are measured on the sensitivity study's emulation; the choice is verified with a
real load and a full evaluation on the evaluation text (``runner.run``), since emulation leaves
out details of the kernels (each backend says which), and saved as a config file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from quantscope.config import (
    CONFIG_FILE_FORMAT,
    DEFAULT_PROMPTS,
    DataSpec,
    QuantConfig,
    RunSpec,
    WeightConfig,
    precision_config,
)
from quantscope.config.kv import KvSpec
from quantscope.errors import UserError
from quantscope.events import Events, LogEvents
from quantscope.metrics.catalog import METRICS
from quantscope.metrics.stats import pareto
from quantscope.mixed.sensitivity import Bench, StudySpec, bench, sensitivity
from quantscope.provenance import digest
from quantscope.results import Display, Study, Unit
from quantscope.runner import default_store
from quantscope.store import Store, now


@dataclass(frozen=True)
class Budget:
    """What the searched config must meet: mean KL, perplexity increase (%), weight MB."""

    max_kl: float | None = None
    max_ppl_increase: float | None = None
    max_mb: float | None = None

    def __post_init__(self) -> None:
        if self.max_kl is None and self.max_ppl_increase is None:
            raise UserError("Give an accuracy budget: --max-kl and/or --max-ppl-increase.")
        for name in ("max_kl", "max_ppl_increase", "max_mb"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}.")

    def excess(self, kl: float, dppl_pct: float, scale: float = 1.0) -> float:
        """How far the accuracy is over budget, as the largest ratio to a limit (≤ 1: met);
        ``scale`` tightens the limits (< 1) when emulation proved optimistic."""
        ratios = [0.0]
        if self.max_kl is not None:
            ratios.append(kl / (self.max_kl * scale))
        if self.max_ppl_increase is not None:
            ratios.append(dppl_pct / (self.max_ppl_increase * scale))
        return max(ratios)

    def describe(self) -> str:
        """The budget in words, from the metric catalog: ``KL ≤ 0.05, Δppl ≤ 2%``."""
        limits = zip(_LIMITS, (self.max_kl, self.max_ppl_increase, self.max_mb), strict=True)
        return ", ".join(METRICS[key].describe_limit(v) for key, v in limits if v is not None)


_LIMITS = ("kl_mean", "dppl_pct", "weight_mb")  # the catalog metrics a budget limits, in order


@dataclass(frozen=True)
class SearchSpec:
    """Search: keep the fewest-bytes set of units in the fallback precision meeting ``budget``
    on calibration, then verify on ``evaluation`` text with a full run; ``tries`` verifications
    at most (each failure tightens the calibration target by the gap it showed)."""

    study: StudySpec
    budget: Budget
    evaluation: DataSpec = field(default_factory=DataSpec)
    tries: int = 3
    save: str | None = None
    label: str | None = None
    seed: int = 0
    speed_reps: int = 3  # of each verification run (a run like any other, stored)
    max_new_tokens: int = 40
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    kv: tuple[KvSpec, ...] = ()  # KV caches to choose among; sizes then count the cache too

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise UserError(f"--tries must be at least 1, got {self.tries}.")
        wrong = [k.name for k in self.kv if k.engine != "torch"]
        if wrong:
            raise UserError(
                f"--kv {wrong[0]} is a llama.cpp cache; the search measures torch emulations, "
                "so choose among dynamic, quanto-* and hqq-* caches."
            )


@dataclass
class SearchResult(Display):
    """The measured candidates (k units kept, calibration KL, Δppl, estimated MB), their
    Pareto front, every verification, the chosen config and where it was saved."""

    settings: dict[str, Any]
    candidates: list[dict[str, Any]]
    front: list[dict[str, Any]]
    verified: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    closest: dict[str, Any] | None
    saved: str | None
    run_id: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_dataframe(self) -> Any:
        """One row per measured candidate (units kept, calibration KL, Δppl, estimated MB)."""
        import pandas as pd

        return pd.DataFrame(self.candidates)


def order_units(study: Study) -> list[Unit]:
    """Units in the order the search keeps them: most KL saved per MB kept first."""
    ranked = {r["unit"]: r for r in study.ranking()}
    score = "gain" if "all-but" in study.settings["modes"] else "only_kl"

    def value(unit: Unit) -> float:
        benefit = max(float(ranked[unit.name].get(score, 0.0)), 0.0)
        return benefit / max(study.costs[unit.name], 1e-9)

    return sorted(study.units, key=value, reverse=True)


class _Candidates:
    """Calibration measurements of "the first k units of ``order`` kept" (through ``kv``'s
    cache when given: then ``total_mb`` adds its MB at ``context`` tokens), cached by k."""

    def __init__(
        self, b: Bench, study: Study, order: list[Unit], kv: KvSpec | None = None,
        context: int = 0,
    ) -> None:  # fmt: skip
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
        return {"kept": k, **measured, "estimated_mb": weights, "kv": kv,
                "cache_mb": self.cache_mb, "total_mb": weights + self.cache_mb}  # fmt: skip

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


def chosen_config(study: StudySpec, order: list[Unit], k: int, label: str) -> QuantConfig:
    """The config keeping the first ``k`` units of ``order`` in the fallback precision."""
    base = study.config
    assert isinstance(base, WeightConfig)  # a study needs an emulation: only weight configs
    dtype = study.fallback if study.fallback not in (None, study.model.dtype) else base.dtype
    skip = (*base.skip, *(u.name for u in order[:k]))
    return replace(base, skip=skip, dtype=dtype, label=label)


def search(spec: SearchSpec, events: Events | None = None) -> SearchResult:
    """Find, verify and save the smallest mixed config meeting ``spec.budget``."""
    from quantscope import runner

    events = events or LogEvents()
    b = bench(spec.study, events)
    study = sensitivity(spec.study, events, prepared=b)
    order = order_units(study)
    context = spec.evaluation.context
    pools = [_Candidates(b, study, order, kv, context) for kv in spec.kv or (None,)]
    for pool in pools:
        pool.spread()
    label = spec.label or _default_label(spec)
    fallback = precision_config(spec.study.fallback or spec.study.model.dtype)
    verified: list[dict[str, Any]] = []
    chosen, scale, run_id, message = None, 1.0, None, ""
    for _ in range(spec.tries):
        meeting = [(p, k) for p in pools if (k := p.smallest(spec.budget, scale)) is not None]
        if not meeting:
            message = "Even every unit in the fallback precision misses the budget on calibration."
            break
        cands, k = min(meeting, key=lambda pk: pk[0].get(pk[1])["total_mb"])  # smallest in all
        if spec.budget.max_mb is not None and cands.get(k)["total_mb"] > spec.budget.max_mb:
            need = cands.get(k)["total_mb"]
            message = f"The accuracy budget needs about {need:.1f} MB, over the MB cap."
            break
        if any(v["kept"] == k and v.get("kv", "") == cands.get(k)["kv"] for v in verified):
            message = "The calibration target cannot be tightened further."
            break
        config = replace(chosen_config(spec.study, order, k, label), kv=cands.kv)
        events.stage(f"Verifying {k} kept units on the evaluation text", None)
        others = (fallback, spec.study.config)
        report = runner.run(_verify_spec(spec, (*others, config)), events)
        run_id = report.run_id
        row = _verified_row(report, config, k, cands.get(k))
        verified.append(row)
        over = spec.budget.excess(row["kl"], row["dppl_pct"])
        if row.get("failed"):
            message = f"Verification failed: {row['failed']}"
            break
        if over <= 1 and (spec.budget.max_mb is None or row["total_mb"] <= spec.budget.max_mb):
            chosen = row
            message = f"Met {spec.budget.describe()} with {k} of {len(order)} units kept."
            break
        # emulation was optimistic by this factor: aim lower on calibration and try again
        scale *= min(0.95, 1 / over) if over > 1 else 0.95
        message = f"Verified result missed {spec.budget.describe()}."
    points = [row for pool in pools for row in pool.found.values()]
    on_front = pareto([(p["total_mb"], p["kl"]) for p in points])
    front = sorted((points[i] for i in on_front), key=lambda p: p["total_mb"])
    closest = None
    if chosen is None:
        rows = verified or points
        closest = min(rows, key=lambda r: spec.budget.excess(r["kl"], r["dppl_pct"]))
    saved = _save(spec, chosen, b, study) if chosen else None
    result = SearchResult(_search_settings(spec, study),
                          sorted(points, key=lambda p: (p["kv"], p["kept"])),
                          front, verified, chosen, closest, saved, run_id, message)  # fmt: skip
    with Store(spec.study.store_path or default_store()) as store:
        store.put_study(digest(study.key, asdict(spec.budget), now()), "search", result.to_dict())
    return result


def _default_label(spec: SearchSpec) -> str:
    budget = spec.budget
    bits = [f"kl{budget.max_kl:g}" if budget.max_kl is not None else "",
            f"ppl{budget.max_ppl_increase:g}pct" if budget.max_ppl_increase is not None else "",
            f"{budget.max_mb:g}mb" if budget.max_mb is not None else ""]  # fmt: skip
    return f"{spec.study.config.method}-mix-" + "-".join(b for b in bits if b)


def _verify_spec(spec: SearchSpec, configs: tuple[QuantConfig, ...]) -> RunSpec:
    study = spec.study
    depths = (spec.evaluation.context,) if spec.kv else None  # the cache's bytes, measured
    return RunSpec(
        model=study.model, configs=configs, data=spec.evaluation, device=study.device,
        seed=spec.seed, batch_size=study.batch_size, store_path=study.store_path,
        speed_reps=spec.speed_reps, max_new_tokens=spec.max_new_tokens, prompts=spec.prompts,
        depths=depths,
    )  # fmt: skip


def _verified_row(report: Any, config: QuantConfig, k: int, cand: dict[str, Any]) -> dict[str, Any]:
    outcome = next(o for o in report.outcomes if o.config == config.display)
    if outcome.result is None or outcome.result.invalid:
        why = outcome.result.invalid if outcome.result is not None else outcome.reason
        return {"kept": k, "config": config.name, "failed": why, "kl": math.inf, "kv": cand["kv"],
                "dppl_pct": math.inf, "weight_mb": math.inf, "total_mb": math.inf}  # fmt: skip
    m = outcome.result.metrics
    cache = [v for key, v in m.items() if key.startswith("kv_bytes@")]  # at the context
    cache_mb = cache[-1] / 2**20 if config.kv and cache else 0.0
    return {
        "kept": k, "config": config.name, "label": config.display, "kv": cand["kv"],
        "kl": m["kl_mean"], "kl_se": m["kl_se"], "dppl_pct": m["dppl_pct"],
        "dppl_pct_se": m["dppl_pct_se"], "weight_mb": m["weight_mb"], "cache_mb": cache_mb,
        "total_mb": m["weight_mb"] + cache_mb,
        "calibration_kl": cand["kl"], "estimated_mb": cand["estimated_mb"],
        "others": {o.config: o.result.metrics for o in report.outcomes
                   if o.result is not None and o.config != config.display},
    }  # fmt: skip


def _search_settings(spec: SearchSpec, study: Study) -> dict[str, Any]:
    return {**study.settings, "budget": asdict(spec.budget), "tries": spec.tries,
            "evaluation_tokens": spec.evaluation.tokens, "study_key": study.key}  # fmt: skip


def _save(spec: SearchSpec, chosen: dict[str, Any], b: Bench, study: Study) -> str:
    """Write the chosen config as a file ``quantscope run --configs FILE.json`` accepts."""
    import json

    path = Path(spec.save or f"{chosen['label']}.json").expanduser()
    body = {
        "format": CONFIG_FILE_FORMAT,
        "label": chosen["label"],
        "config": chosen["config"],
        "model": b.files.name,
        "model_fingerprint": b.files.fingerprint,
        "budget": asdict(spec.budget),
        "verified": {k: chosen[k] for k in ("kl", "kl_se", "dppl_pct", "dppl_pct_se", "weight_mb")},
        "evaluation_tokens": spec.evaluation.tokens,
        "study": study.key,
        "created": now(),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(body, indent=2), encoding="utf-8")
    except OSError as err:
        raise UserError(f"Cannot write the config file '{path}': {err}.") from None
    return str(path)
