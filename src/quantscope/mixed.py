"""Mixed precision: how much each part of a model suffers under a quantization config, and
the smallest mix of quantized and fallback-precision parts that meets an accuracy budget.

Both run on an *emulation* of the config (its backend's ``emulate``): the baseline is loaded
once, every linear's quantized and fallback weights are computed once, and a part is
switched by swapping which tensor its linears hold. Measuring one variant then costs one
forward pass over the calibration windows, with the exact KL against the baseline's
log-probs held in memory (``evaluate.calibration``). Calibration text is training text,
never the evaluation text. The search verifies its choice with a real load and a full
evaluation on the evaluation text (``runner.run``), since emulation leaves out details of
the kernels (each backend says which).

A *unit* is one linear layer (``by="linear"``) or all linears of one block (``by="block"``).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from quantscope import backends, data, models
from quantscope.backends import Emulation
from quantscope.backends.precision import rounding
from quantscope.config import (
    CONFIG_FILE_FORMAT,
    DataSpec,
    DType,
    Method,
    ModelSpec,
    QuantConfig,
    RunSpec,
    select_modules,
)
from quantscope.errors import UserError
from quantscope.evaluate.calibration import Calibration, calibrate, divergence
from quantscope.metrics.stats import pareto
from quantscope.provenance import digest, versions
from quantscope.results import Study, Unit
from quantscope.runner import Events, LogEvents, default_store
from quantscope.store import Store, now

log = logging.getLogger(__name__)

MODES = ("only", "all-but")
_PRECISION = {DType.FP32: Method.FP32, DType.BF16: Method.BF16, DType.FP16: Method.FP16}
_BLOCK = re.compile(r"^(?P<block>(?:.*\.)?(?:layers|layer|h|blocks)\.(?P<n>\d+))\.")
EMULATION_VERSION = "emulation-1"


def find_units(shapes: dict[str, tuple[int, int]], by: str) -> list[Unit]:
    """Units over linear layers ``{name: (out_features, in_features)}``, in model order.

    >>> shapes = {"model.layers.0.mlp.up_proj": (8, 4), "model.layers.0.mlp.down_proj": (4, 8),
    ...           "model.layers.1.mlp.up_proj": (8, 4)}
    >>> [(u.name, u.layer, u.kind, u.params) for u in find_units(shapes, "block")]
    [('model.layers.0', 0, 'block', 64), ('model.layers.1', 1, 'block', 32)]
    >>> [u.kind for u in find_units(shapes, "linear")]
    ['up_proj', 'down_proj', 'up_proj']
    """
    units: dict[str, Unit] = {}
    for name, (out_f, in_f) in shapes.items():
        found = _BLOCK.match(name)
        layer = int(found.group("n")) if found else None
        if by == "linear" or found is None:
            units[name] = Unit(name, layer, name.rsplit(".", 1)[-1], (name,), out_f * in_f)
            continue
        block = found.group("block")
        old = units.get(block, Unit(block, layer, "block", (), 0))
        units[block] = replace(old, linears=(*old.linears, name), params=old.params + out_f * in_f)
    return list(units.values())


@dataclass
class Emulated:
    """A baseline model whose linears can each hold quantized or fallback weights."""

    model: Any
    modules: dict[str, Any]
    quant: dict[str, torch.Tensor]
    fallback: dict[str, torch.Tensor]

    def set(self, quantized: Iterable[str]) -> None:
        """Quantize exactly the linears named in ``quantized``; the rest hold fallback weights."""
        chosen = set(quantized)
        for name, module in self.modules.items():
            module.weight.data = self.quant[name] if name in chosen else self.fallback[name]


def emulate(model: Any, names: list[str], quant: Emulation, fallback: Emulation) -> Emulated:
    """Prepare ``model`` in place: the weights of ``names`` under both emulations, and every
    other parameter (embeddings, norms, biases) rounded to the fallback precision."""
    modules = {n: m for n, m in model.named_modules() if n in set(names)}
    with torch.no_grad():
        q = {n: quant.weight(m.weight.data) for n, m in modules.items()}
        f = {n: fallback.weight(m.weight.data) for n, m in modules.items()}
        held = {m.weight.data_ptr() for m in modules.values()}
        for p in model.parameters():
            if p.data_ptr() not in held:
                p.data = fallback.weight(p.data)
    return Emulated(model, modules, q, f)


@dataclass(frozen=True)
class StudySpec:
    """A sensitivity study: ``config`` one unit at a time, everything else in ``fallback``
    (None: the baseline's precision), on ``calib`` (training text; the bundled one by
    default). ``only``: just the unit quantized; ``all-but``: all quantized but the unit."""

    model: ModelSpec
    config: QuantConfig
    fallback: DType | None = None
    by: str = "block"
    calib: DataSpec = field(default_factory=lambda: DataSpec(tokens=1024, context=256, stride=192))
    modes: tuple[str, ...] = MODES
    device: str = "auto"
    batch_size: int = 4
    store_path: str | None = None

    def __post_init__(self) -> None:
        if self.by not in ("block", "linear"):
            raise UserError(f"--by must be block or linear, got '{self.by}'.")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise UserError(f"--modes must be among {', '.join(MODES)}, got {unknown}.")
        if self.config.method in _PRECISION.values():
            raise UserError(
                f"'{self.config.name}' quantizes nothing; study a quantized config such as bnb-nf4."
            )


@dataclass
class Bench:
    """What every measurement of a study shares: the emulated model and the calibration."""

    spec: StudySpec
    files: models.ModelFiles
    units: list[Unit]
    shapes: dict[str, tuple[int, int]]
    emulated: Emulated
    calibration: Calibration
    quant: Emulation
    fallback: Emulation
    fixed_bytes: int
    key: str

    def measure(self, quantized: Iterable[Unit]) -> dict[str, float]:
        """Calibration KL and Δppl with exactly the linears of ``quantized`` quantized."""
        self.emulated.set(n for u in quantized for n in u.linears)
        start = time.perf_counter()
        found = divergence(self.emulated.model, self.calibration)
        found["seconds"] = time.perf_counter() - start
        return found

    def unit_bytes(self, unit: Unit, kept: bool) -> int:
        """Bytes of a unit's linear weights, quantized or kept in the fallback precision."""
        size = self.fallback.nbytes if kept else self.quant.nbytes
        return sum(size(*self.shapes[n]) for n in unit.linears)

    def estimate_mb(self, kept: set[str]) -> float:
        """Estimated weight MB with the units named in ``kept`` in fallback precision."""
        total = self.fixed_bytes + sum(self.unit_bytes(u, u.name in kept) for u in self.units)
        return total / 2**20


def bench(spec: StudySpec, events: Events) -> Bench:
    """Load the baseline, calibrate on the training text and prepare the emulation."""
    backend = backends.get(spec.config.method)
    quant = backend.emulate(spec.config)
    if quant is None:
        raise UserError(
            f"{spec.config.name} has no emulation, so it cannot be studied one unit at a time."
        )
    device = models.resolve_device(spec.device)
    events.stage("Loading the baseline", None)
    files = models.resolve(spec.model)
    tokenizer = models.load_tokenizer(files, spec.model)
    bos = spec.calib.bos if spec.calib.bos is not None else data.adds_bos(tokenizer)
    prefix = data.prefix_token(tokenizer) if bos else None
    windows = data.build_windows(
        data.training_sources(spec.calib), data.encoder(tokenizer), spec.calib, prefix
    )
    base = QuantConfig(_PRECISION[spec.model.dtype])
    model = backends.get(base.method).load(files, spec.model, base, device).model
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    chosen = select_modules(list(linears), spec.config.include, (*spec.config.skip, "lm_head"))
    shapes = {n: (linears[n].out_features, linears[n].in_features) for n in chosen}
    events.stage("Calibration pass (baseline)", None)
    calibration = calibrate(model, windows, spec.batch_size)
    fallback = rounding(spec.fallback or spec.model.dtype)
    emulated = emulate(model, chosen, quant, fallback)
    fixed = _fixed_bytes(model, chosen, fallback)
    fallback_name = (spec.fallback or spec.model.dtype).value
    key = digest(
        EMULATION_VERSION, files.fingerprint, spec.config.name, fallback_name, spec.by,
        windows.fingerprint, torch.device(device).type, spec.batch_size, versions(),
    )  # fmt: skip
    units = find_units(shapes, spec.by)
    return Bench(spec, files, units, shapes, emulated, calibration, quant, fallback, fixed, key)


def _fixed_bytes(model: Any, chosen: list[str], fallback: Emulation) -> int:
    """Bytes of every parameter that is not a chosen linear's weight, in the fallback
    precision (tied weights once), and of the buffers (rotary tables), as they are."""
    modules = dict(model.named_modules())
    held = {modules[n].weight.data_ptr() for n in chosen}
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.data_ptr() in held or p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += fallback.nbytes(1, p.numel())
    return total + sum(b.nbytes for b in model.buffers())


def sensitivity(
    spec: StudySpec, events: Events | None = None, prepared: Bench | None = None
) -> Study:
    """Measure every unit in every mode of ``spec``; each measurement is stored as it finishes
    and a rerun with the same settings reuses the stored ones.

    >>> from quantscope.config import model_spec, parse_config
    >>> study = sensitivity(StudySpec(model_spec(None), parse_config("bnb-nf4")))  # doctest: +SKIP
    >>> study.ranking()[0]["unit"]  # doctest: +SKIP
    'model.layers.4'
    """
    events = events or LogEvents()
    b = prepared or bench(spec, events)
    store = Store(spec.store_path or default_store())
    try:
        done = store.rows(b.key)
        plan = [(("*", "none"), []), (("*", "all"), b.units)]
        for unit in b.units:
            others = [u for u in b.units if u is not unit]
            plan += [((unit.name, m), [unit] if m == "only" else others) for m in spec.modes]
        events.stage(f"{spec.config.name}: {len(b.units)} units by {spec.by}", len(plan))
        for (name, mode), quantized in plan:
            if (name, mode) not in done:
                done[(name, mode)] = b.measure(quantized)
                store.put_row(b.key, name, mode, done[(name, mode)])
            events.advance(1)
        costs = {u.name: (b.unit_bytes(u, True) - b.unit_bytes(u, False)) / 2**20 for u in b.units}
        study = Study(b.key, _study_settings(b, done), b.units, done, costs)
        store.put_study(b.key, "sensitivity", study.to_dict())
    finally:
        store.close()
    return study


def _study_settings(b: Bench, rows: dict[tuple[str, str], dict[str, float]]) -> dict[str, Any]:
    spec, calib = b.spec, b.calibration
    seconds = sorted(r["seconds"] for r in rows.values())
    return {
        "seconds_per_measurement": seconds[len(seconds) // 2],
        "model": b.files.name,
        "model_fingerprint": b.files.fingerprint,
        "config": spec.config.name,
        "fallback": (spec.fallback or spec.model.dtype).value,
        "by": spec.by,
        "modes": list(spec.modes),
        "calibration_text": " + ".join(calib.windows.sources),
        "calibration_tokens": calib.tokens,
        "calibration_windows": len(calib.windows.ids),
        "context": spec.calib.context,
        "stride": spec.calib.stride,
        "emulation": b.quant.note or "exact",
        "fallback_emulation": b.fallback.note or "exact",
        "estimated_mb_all_quantized": b.estimate_mb(set()),
        "estimated_mb_none_quantized": b.estimate_mb({u.name for u in b.units}),
        "versions": versions(),
        "created": now(),
    }


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
        parts = [f"KL ≤ {self.max_kl:g}" if self.max_kl is not None else "",
                 f"Δppl ≤ {self.max_ppl_increase:g}%" if self.max_ppl_increase is not None else "",
                 f"weights ≤ {self.max_mb:g} MB" if self.max_mb is not None else ""]  # fmt: skip
        return ", ".join(p for p in parts if p)


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

    def __post_init__(self) -> None:
        if self.tries < 1:
            raise UserError(f"--tries must be at least 1, got {self.tries}.")


@dataclass
class SearchResult:
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


def order_units(study: Study) -> list[Unit]:
    """Units in the order the search keeps them: most KL saved per MB kept first."""
    ranked = {r["unit"]: r for r in study.ranking()}
    score = "gain" if "all-but" in study.settings["modes"] else "only_kl"

    def value(unit: Unit) -> float:
        benefit = max(float(ranked[unit.name].get(score, 0.0)), 0.0)
        return benefit / max(study.costs[unit.name], 1e-9)

    return sorted(study.units, key=value, reverse=True)


class _Candidates:
    """Calibration measurements of "the first k units of ``order`` kept", cached by k."""

    def __init__(self, b: Bench, study: Study, order: list[Unit]) -> None:
        self.bench, self.order = b, order
        self.found: dict[int, dict[str, Any]] = {}
        n = len(order)
        for k, key in ((0, ("*", "all")), (n, ("*", "none"))):
            self.found[k] = self._row(k, study.rows[key])

    def _row(self, k: int, measured: dict[str, float]) -> dict[str, Any]:
        kept = {u.name for u in self.order[:k]}
        return {"kept": k, **measured, "estimated_mb": self.bench.estimate_mb(kept)}

    def get(self, k: int) -> dict[str, Any]:
        if k not in self.found:
            self.found[k] = self._row(k, self.bench.measure(self.order[k:]))
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
    cands = _Candidates(b, study, order)
    cands.spread()
    label = spec.label or _default_label(spec)
    fallback = QuantConfig(_PRECISION[spec.study.fallback or spec.study.model.dtype])
    verified: list[dict[str, Any]] = []
    chosen, scale, run_id, message = None, 1.0, None, ""
    for _ in range(spec.tries):
        k = cands.smallest(spec.budget, scale)
        if k is None:
            message = "Even every unit in the fallback precision misses the budget on calibration."
            break
        if spec.budget.max_mb is not None and cands.get(k)["estimated_mb"] > spec.budget.max_mb:
            need = cands.get(k)["estimated_mb"]
            message = f"The accuracy budget needs about {need:.1f} MB, over the MB cap."
            break
        if any(v["kept"] == k for v in verified):
            message = "The calibration target cannot be tightened further."
            break
        config = chosen_config(spec.study, order, k, label)
        events.stage(f"Verifying {k} kept units on the evaluation text", None)
        report = runner.run(_verify_spec(spec, (fallback, spec.study.config, config)), events)
        run_id = report.run_id
        row = _verified_row(report, config, k, cands.get(k))
        verified.append(row)
        over = spec.budget.excess(row["kl"], row["dppl_pct"])
        if row.get("failed"):
            message = f"Verification failed: {row['failed']}"
            break
        if over <= 1 and (spec.budget.max_mb is None or row["weight_mb"] <= spec.budget.max_mb):
            chosen = row
            message = f"Met {spec.budget.describe()} with {k} of {len(order)} units kept."
            break
        # emulation was optimistic by this factor: aim lower on calibration and try again
        scale *= min(0.95, 1 / over) if over > 1 else 0.95
        message = f"Verified result missed {spec.budget.describe()}."
    points = list(cands.found.values())
    on_front = pareto([(p["estimated_mb"], p["kl"]) for p in points])
    front = sorted((points[i] for i in on_front), key=lambda p: p["estimated_mb"])
    closest = None
    if chosen is None:
        pool = verified or points
        closest = min(pool, key=lambda r: spec.budget.excess(r["kl"], r["dppl_pct"]))
    saved = _save(spec, chosen, b, study) if chosen else None
    result = SearchResult(_search_settings(spec, study), sorted(points, key=lambda p: p["kept"]),
                          front, verified, chosen, closest, saved, run_id, message)  # fmt: skip
    store = Store(spec.study.store_path or default_store())
    try:
        store.put_study(digest(study.key, asdict(spec.budget), now()), "search", result.to_dict())
    finally:
        store.close()
    return result


def _default_label(spec: SearchSpec) -> str:
    budget = spec.budget
    bits = [f"kl{budget.max_kl:g}" if budget.max_kl is not None else "",
            f"ppl{budget.max_ppl_increase:g}pct" if budget.max_ppl_increase is not None else "",
            f"{budget.max_mb:g}mb" if budget.max_mb is not None else ""]  # fmt: skip
    return f"{spec.study.config.method.value}-mix-" + "-".join(b for b in bits if b)


def _verify_spec(spec: SearchSpec, configs: tuple[QuantConfig, ...]) -> RunSpec:
    study = spec.study
    return RunSpec(
        model=study.model, configs=configs, data=spec.evaluation, device=study.device,
        seed=spec.seed, batch_size=study.batch_size, store_path=study.store_path,
    )  # fmt: skip


def _verified_row(report: Any, config: QuantConfig, k: int, cand: dict[str, Any]) -> dict[str, Any]:
    outcome = next(o for o in report.outcomes if o.config == config.display)
    if outcome.result is None:
        return {"kept": k, "config": config.name, "failed": outcome.reason, "kl": math.inf,
                "dppl_pct": math.inf, "weight_mb": math.inf}  # fmt: skip
    m = outcome.result.metrics
    return {
        "kept": k, "config": config.name, "label": config.display,
        "kl": m["kl_mean"], "kl_se": m["kl_se"], "dppl_pct": m["dppl_pct"],
        "dppl_pct_se": m["dppl_pct_se"], "weight_mb": m["weight_mb"],
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
