"""Sensitivity: how much each unit of a model suffers under a quantization config.

It runs on an *emulation* of the config (its backend's ``emulate``): the baseline is loaded
once, every linear's quantized and fallback weights are computed once, and a unit is switched
by swapping which tensor its linears hold. Measuring one variant then costs one forward pass
over the calibration windows, with the exact KL against the baseline's log-probs held in
memory (``evaluate.calibration``). Calibration text is training text, never evaluation text.

A *unit* is one linear layer (``by="linear"``) or all linears of one block (``by="block"``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from quantscope import backends, data, models
from quantscope.backends import Emulation
from quantscope.backends.precision import rounding
from quantscope.config import DataSpec, DType, ModelSpec, QuantConfig, precision_config
from quantscope.config.kv import KvSpec
from quantscope.errors import UserError
from quantscope.evaluate.calibration import Calibration, calibrate, divergence
from quantscope.evaluate.depth import predicted_bytes
from quantscope.events import Events, LogEvents
from quantscope.provenance import digest, now, versions
from quantscope.results import SensitivityStudy, Unit
from quantscope.store import Store, default_store

MODES = ("only", "all-but")
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
class SensitivitySpec:
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
        if not self.config.quantizes:
            raise UserError(
                f"'{self.config.name}' quantizes nothing; study a quantized config such as bnb-nf4."
            )


@dataclass
class Bench:
    """What every measurement of a study shares: the emulated model and the calibration."""

    spec: SensitivitySpec
    files: models.ModelFiles
    units: list[Unit]
    shapes: dict[str, tuple[int, int]]
    emulated: Emulated
    calibration: Calibration
    quant: Emulation
    fallback: Emulation
    fixed_bytes: int
    key: str

    def measure(self, quantized: Iterable[Unit], kv: KvSpec | None = None) -> dict[str, float]:
        """Calibration KL and Δppl with exactly the linears of ``quantized`` quantized (and
        the calibration text fed through ``kv``'s cache when given)."""
        self.emulated.set(n for u in quantized for n in u.linears)
        start = time.perf_counter()
        found = divergence(self.emulated.model, self.calibration, kv)
        found["seconds"] = time.perf_counter() - start
        return found

    def unit_bytes(self, unit: Unit, kept: bool) -> int:
        """Bytes of a unit's linear weights, quantized or kept in the fallback precision."""
        size = self.fallback.nbytes if kept else self.quant.nbytes
        return sum(size(*self.shapes[n]) for n in unit.linears)

    def cache_mb(self, kv: KvSpec | None, context: int) -> float:
        """The formula's MB of ``kv``'s cache holding ``context`` tokens (0 without one), in
        the precision the verified config computes in."""
        if kv is None:
            return 0.0
        dtype = self.spec.fallback or self.spec.model.dtype
        nbytes = models.torch_dtype(dtype).itemsize
        return predicted_bytes(self.emulated.model.config, kv, context, nbytes) / 2**20

    def estimate_mb(self, kept: set[str]) -> float:
        """Estimated weight MB with the units named in ``kept`` in fallback precision."""
        total = self.fixed_bytes + sum(self.unit_bytes(u, u.name in kept) for u in self.units)
        return total / 2**20


def bench(spec: SensitivitySpec, events: Events) -> Bench:
    """Load the baseline, calibrate on the training text and prepare the emulation."""
    quant = backends.get(spec.config).emulate(spec.config)
    if quant is None:
        raise UserError(
            f"{spec.config.name} has no emulation, so it cannot be studied one unit at a time."
        )
    device = models.resolve_device(spec.device)
    events.stage("Loading the baseline", None)
    files = models.resolve(spec.model)
    tokenizer = models.load_tokenizer(files, spec.model)
    sources = data.training_sources(spec.calib)
    windows, _bos = data.text_windows(sources, tokenizer, spec.calib)
    base = precision_config(spec.model.dtype)
    model = backends.get(base).load(files, spec.model, base, device).model
    linears = dict(backends.linears(model))
    chosen = spec.config.select(list(linears))
    shapes = {n: (linears[n].out_features, linears[n].in_features) for n in chosen}
    events.stage("Calibration pass (baseline)", None)
    calibration = calibrate(model, windows, spec.batch_size)
    fallback = rounding(spec.fallback or spec.model.dtype)
    emulated = emulate(model, chosen, quant, fallback)
    fixed = _fixed_bytes(model, chosen, fallback)
    fallback_name = (spec.fallback or spec.model.dtype).value
    key = digest(
        EMULATION_VERSION,
        files.fingerprint,
        spec.config.name,
        fallback_name,
        spec.by,
        windows.fingerprint,
        torch.device(device).type,
        spec.batch_size,
        versions(),
    )
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
    spec: SensitivitySpec, events: Events | None = None, prepared: Bench | None = None
) -> SensitivityStudy:
    """Measure every unit in every mode of ``spec``; each measurement is stored as it finishes
    and a rerun with the same settings reuses the stored ones.

    >>> from quantscope.config import model_spec, parse_config
    >>> spec = SensitivitySpec(model_spec(None), parse_config("bnb-nf4"))
    >>> study = sensitivity(spec)  # doctest: +SKIP
    >>> study.ranking()[0]["unit"]  # doctest: +SKIP
    'model.layers.4'
    """
    events = events or LogEvents()
    b = prepared or bench(spec, events)
    with Store(spec.store_path or default_store()) as store:
        done = store.sensitivity_rows(b.key)
        plan = [(("*", "none"), []), (("*", "all"), b.units)]
        for unit in b.units:
            others = [u for u in b.units if u is not unit]
            plan += [((unit.name, m), [unit] if m == "only" else others) for m in spec.modes]
        events.stage(f"{spec.config.name}: {len(b.units)} units by {spec.by}", len(plan))
        for (name, mode), quantized in plan:
            if (name, mode) not in done:
                done[(name, mode)] = b.measure(quantized)
                store.put_sensitivity_row(b.key, name, mode, done[(name, mode)])
            events.advance(1)
        costs = {u.name: (b.unit_bytes(u, True) - b.unit_bytes(u, False)) / 2**20 for u in b.units}
        study = SensitivityStudy(b.key, _study_settings(b, done), b.units, done, costs)
        store.put_analysis(b.key, "sensitivity", study.to_dict())
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
