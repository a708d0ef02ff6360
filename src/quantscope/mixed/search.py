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

from quantscope import runner
from quantscope.config import (
    CONFIG_FILE_FORMAT,
    DEFAULT_PROMPTS,
    Budget,
    DataSpec,
    Margins,
    QuantConfig,
    RunSpec,
    precision_config,
)
from quantscope.config.kv import KvSpec
from quantscope.errors import UserError
from quantscope.events import Events, LogEvents
from quantscope.metrics import equivalence as eq
from quantscope.metrics.catalog import METRICS
from quantscope.metrics.stats import estimate_of, pareto
from quantscope.mixed.candidates import Candidates, chosen_config, order_units
from quantscope.mixed.sensitivity import Bench, SensitivitySpec, bench, sensitivity
from quantscope.provenance import digest, now
from quantscope.results import Display, SensitivityStudy
from quantscope.store import Store, default_store


def describe_budget(budget: Budget) -> str:
    """The budget's limits in words, from the metric catalog: ``KL ≤ 0.05, Δppl ≤ 2%``.

    >>> describe_budget(Budget(max_kl=0.05, max_ppl_increase=2.0, max_mb=200.0))
    'KL ≤ 0.05, Δppl ≤ 2%, weights ≤ 200 MB'
    """
    limits = zip(_LIMITS, (budget.max_kl, budget.max_ppl_increase, budget.max_mb), strict=True)
    return ", ".join(METRICS[key].describe_limit(v) for key, v in limits if v is not None)


_LIMITS = ("kl_mean", "dppl_pct", "weight_mb")  # the catalog metrics a budget limits, in order


@dataclass(frozen=True)
class SearchSpec:
    """Search: keep the fewest-bytes set of units in the fallback precision meeting ``budget``
    on calibration, then verify on ``evaluation`` text with a full run; ``tries`` verifications
    at most (each failure tightens the calibration target by the gap it showed)."""

    study: SensitivitySpec
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
    until_decided: bool = False  # verification runs stop once the budget is decided

    def __post_init__(self) -> None:
        if not self.budget.limits_accuracy:
            raise UserError("Give an accuracy budget: --max-kl and/or --max-ppl-increase.")
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


def search(spec: SearchSpec, events: Events | None = None) -> SearchResult:
    """Find, verify and save the smallest mixed config meeting ``spec.budget``."""

    events = events or LogEvents()
    b = bench(spec.study, events)
    study = sensitivity(spec.study, events, prepared=b)
    order = order_units(study)
    context = spec.evaluation.context
    pools = [Candidates(b, study, order, kv, context) for kv in spec.kv or (None,)]
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
        over = spec.budget.excess(row["kl_upper"], row["dppl_upper_pct"])
        if row.get("failed"):
            message = f"Verification failed: {row['failed']}"
            break
        if over <= 1 and (spec.budget.max_mb is None or row["total_mb"] <= spec.budget.max_mb):
            chosen = row
            message = f"Met {describe_budget(spec.budget)} with {k} of {len(order)} units kept."
            break
        # emulation was optimistic by this factor: aim lower on calibration and try again
        scale *= min(0.95, 1 / over) if over > 1 else 0.95
        message = f"Verified result missed {describe_budget(spec.budget)}."
    saved = _save(spec, chosen, b, study) if chosen else None
    result = _result(spec, study, pools, verified, chosen, saved, run_id, message)
    with Store(spec.study.store_path or default_store()) as store:
        key = digest(study.key, asdict(spec.budget), now())
        store.put_analysis(key, "search", result.to_dict())
    return result


def _result(
    spec: SearchSpec,
    study: SensitivityStudy,
    pools: list[Candidates],
    verified: list[dict[str, Any]],
    chosen: dict[str, Any] | None,
    saved: str | None,
    run_id: str | None,
    message: str,
) -> SearchResult:
    """Every point emulated, the size-KL front, what was verified and chosen (or the
    closest point when nothing met the budget)."""
    points = [row for pool in pools for row in pool.found.values()]
    on_front = pareto([(p["total_mb"], p["kl"]) for p in points])
    front = sorted((points[i] for i in on_front), key=lambda p: p["total_mb"])
    closest = None
    if chosen is None:
        rows = verified or points
        closest = min(rows, key=lambda r: spec.budget.excess(r["kl"], r["dppl_pct"]))
    every = sorted(points, key=lambda p: (p["kv"], p["kept"]))
    settings = _search_settings(spec, study)
    return SearchResult(settings, every, front, verified, chosen, closest, saved, run_id, message)


def _default_label(spec: SearchSpec) -> str:
    budget = spec.budget
    bits = [
        f"kl{budget.max_kl:g}" if budget.max_kl is not None else "",
        f"ppl{budget.max_ppl_increase:g}pct" if budget.max_ppl_increase is not None else "",
        f"{budget.max_mb:g}mb" if budget.max_mb is not None else "",
    ]
    return f"{spec.study.config.method}-mix-" + "-".join(b for b in bits if b)


def _verify_spec(spec: SearchSpec, configs: tuple[QuantConfig, ...]) -> RunSpec:
    study = spec.study
    depths = (spec.evaluation.context,) if spec.kv else None  # the cache's bytes, measured
    budget = spec.budget
    design = Margins(ppl=budget.max_ppl_increase, kl=budget.max_kl)  # the budget's limits
    return RunSpec(
        model=study.model,
        configs=configs,
        data=spec.evaluation,
        device=study.device,
        seed=spec.seed,
        batch_size=study.batch_size,
        store_path=study.store_path,
        speed_reps=spec.speed_reps,
        max_new_tokens=spec.max_new_tokens,
        prompts=spec.prompts,
        depths=depths,
        until_decided=design if spec.until_decided else None,
    )


def _verified_row(report: Any, config: QuantConfig, k: int, cand: dict[str, Any]) -> dict[str, Any]:
    outcome = next(o for o in report.outcomes if o.config == config.display)
    if outcome.result is None or outcome.result.invalid:
        why = outcome.result.invalid if outcome.result is not None else outcome.reason
        return {
            "kept": k,
            "config": config.name,
            "failed": why,
            "kl": math.inf,
            "kl_upper": math.inf,
            "kv": cand["kv"],
            "dppl_pct": math.inf,
            "dppl_upper_pct": math.inf,
            "weight_mb": math.inf,
            "total_mb": math.inf,
        }
    m = outcome.result.metrics
    kl_upper = eq.upper_bound(estimate_of(m, "kl"))
    dppl_upper = 100.0 * math.expm1(eq.upper_bound(estimate_of(m, "dppl_log")))
    cache = [v for key, v in m.items() if key.startswith("kv_bytes@")]  # at the context
    cache_mb = cache[-1] / 2**20 if config.kv and cache else 0.0
    return {
        "kept": k,
        "config": config.name,
        "label": config.display,
        "kv": cand["kv"],
        "kl": m["kl_mean"],
        "kl_se": m["kl_se"],
        "kl_upper": kl_upper,  # one-sided 95% bounds: "met" means shown within the budget
        "dppl_pct": m["dppl_pct"],
        "dppl_pct_se": m["dppl_pct_se"],
        "dppl_upper_pct": dppl_upper,
        "weight_mb": m["weight_mb"],
        "cache_mb": cache_mb,
        "total_mb": m["weight_mb"] + cache_mb,
        "calibration_kl": cand["kl"],
        "estimated_mb": cand["estimated_mb"],
        "others": {
            o.config: o.result.metrics
            for o in report.outcomes
            if o.result is not None and o.config != config.display
        },
    }


def _search_settings(spec: SearchSpec, study: SensitivityStudy) -> dict[str, Any]:
    return {
        **study.settings,
        "budget": asdict(spec.budget),
        "tries": spec.tries,
        "evaluation_tokens": spec.evaluation.tokens,
        "study_key": study.key,
    }


def _save(spec: SearchSpec, chosen: dict[str, Any], b: Bench, study: SensitivityStudy) -> str:
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
