"""The run context: what one run prepares once and every executor shares.

:func:`prepare` resolves a :class:`~quantscope.config.RunSpec` into a :class:`RunContext`
(device, model files, tokenizer, token windows, settings and their fingerprint, the intra-op
thread count). The context answers, in one place, the questions every executor asks of a
config: its result key (:meth:`RunContext.key`), whether the store already holds it and
linking it to the run if so (:meth:`RunContext.reuse`), and storing and linking what was
measured (:meth:`RunContext.record`). ``quantscope run``, the local sweep and the Ray driver
all go through these, so they cannot disagree on what is the same measurement.

>>> from quantscope.config import parse_config
>>> a, b = (result_key("model", parse_config(n), "data", "settings") for n in ("fp32", "bf16"))
>>> a != b and len(a) == len(b)
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from quantscope import backends, capability, data, models, tasks, toolserver
from quantscope.backends import lora
from quantscope.cache import maker, read_made
from quantscope.config import Checkpoint, QuantConfig, RunSpec
from quantscope.events import Events
from quantscope.provenance import digest, hardware, versions
from quantscope.reference import ReferenceCache
from quantscope.results import Outcome, Status
from quantscope.store import Store

REUSED_REASON = "already measured with these settings"


def result_key(model_fp: str, config: QuantConfig, data_fp: str, settings_fp: str) -> str:
    """The key a result is stored under: model, config (its canonical name), windows and
    settings, and the adapter's own fingerprint (a retrained adapter is measured again), and a
    checkpoint folder's (a folder saved again is measured again)."""
    parts: tuple[str, ...] = (model_fp, config.name, data_fp, settings_fp)
    if isinstance(config, Checkpoint) and config.local:
        parts += (models.fingerprint(Path(config.path)),)
    return digest(*parts, lora.fingerprint(config.lora)) if config.lora else digest(*parts)


@dataclass
class RunContext:
    """What every config of one run shares, and the one place that keys, reuses and records
    its results. ``threads`` is the intra-op thread count every pass of the run uses, whichever
    process runs it: reductions are split by thread, so another count gives other low digits
    (and HQQ's optimiser, another optimum)."""

    spec: RunSpec
    device: str
    files: models.ModelFiles
    tokenizer: Any
    windows: data.Windows
    text_name: str
    settings: dict[str, Any]
    settings_fp: str
    events: Events
    threads: int
    reference: ReferenceCache | None = None
    base_generations: list[dict[str, Any]] | None = None
    tasks: list[tasks.Task] = field(default_factory=list)
    base_answers: dict[str, dict[str, list[bool]]] | None = None
    task_errors: dict[str, str] = field(default_factory=dict)
    baseline_model: torch.nn.Module | None = None
    hardware: capability.Device | None = None  # the device's kind and capability
    baseline_placement: dict[str, int] | None = None  # modules per device, CPU and disk

    def key(self, config: QuantConfig) -> str:
        """The key ``config``'s result is stored under in this run (a served config's, with
        the load test's settings)."""
        settings = self.settings_fp
        if config.engine:
            settings = digest(settings, self.spec.serve.settings())
        return result_key(self.files.fingerprint, config, self.windows.fingerprint, settings)

    def reuse(
        self, store: Store, run_id: str, config: QuantConfig, position: int
    ) -> Outcome | None:
        """The stored result of ``config``, linked to run ``run_id`` at ``position`` as reused;
        None when it must be measured (not stored, or the run forces a new measurement)."""
        key = self.key(config)
        stored = None if self.spec.force else store.get(key)
        if stored is None:
            return None
        store.link(run_id, key, position, Status.REUSED)
        return Outcome(config.display, Status.REUSED, REUSED_REASON, stored, self.files.name)

    def record(
        self, store: Store, run_id: str, config: QuantConfig, position: int, outcome: Outcome
    ) -> None:
        """Store what measuring ``config`` gave (committed at once) and link it to the run; a
        skipped or failed config leaves no row."""
        if outcome.result is None:
            return
        store.put(outcome.result, outcome.token_values)
        store.link(run_id, self.key(config), position, outcome.status)

    def provenance(self, store: Path | str) -> dict[str, Any]:
        """Where a run's numbers came from: model, text, store, hardware, threads, and which
        process ran it and which made its reference pass."""
        made = read_made(self.reference.folder) if self.reference else None
        return {
            "model": self.files.name,
            "model_origin": self.files.origin,
            "model_folder": str(self.files.folder),
            "model_fingerprint": self.files.fingerprint,
            "text": self.text_name,
            "data_fingerprint": self.windows.fingerprint,
            "store": str(store),
            "hardware": hardware(self.device),
            "threads": self.threads,
            "process": maker(),
            "reference_made_by": (made or {}).get("made_by"),
            "baseline_placement": self.baseline_placement,
        }


def _settings(spec: RunSpec, windows: data.Windows, device: str, bos: bool) -> dict[str, Any]:
    return (
        {
            "tokens_requested": spec.data.tokens,
            "tokens_scored": windows.n_scored,
            "windows": len(windows.ids),
            "sources": list(windows.sources),
            "context": spec.data.context,
            "stride": spec.data.stride,
            "bos": bos,
            "seed": spec.seed,
            "batch_size": spec.batch_size,  # LLM.int8 picks outlier columns per batch
            "baseline_dtype": spec.model.dtype.value,
            "ref_topk": spec.ref_topk,
            "ref_samples": spec.ref_samples,
            "exact": spec.exact,
            "prompts": list(spec.prompts),
            "max_new_tokens": spec.max_new_tokens,
            "speed_reps": spec.speed_reps,
            "device_type": torch.device(device).type,
            "versions": versions(),
        }
        | ({"depths": list(spec.depths)} if spec.depths is not None else {})
        | _design(spec)
    )


def _design(spec: RunSpec) -> dict[str, Any]:
    """A run that stops when decided: its margins and spending function (in the settings, so
    its results are never taken for a fixed run's, nor a fixed run's for its)."""
    if spec.until_decided is None:
        return {}
    m = spec.until_decided
    return {"until_decided": {"ppl": m.ppl, "kl": m.kl, "spending": spec.spending}}


def prepare(spec: RunSpec, events: Events, threads: int | None = None) -> RunContext:
    """Resolve the device, model files, tokenizer, text and windows of a run. ``threads``:
    the intra-op thread count its passes use (this process's count when None; an executor's
    workers are given the driver's, so every executor gives the same numbers)."""
    if spec.serve.port and any(c.engine for c in spec.configs):
        toolserver.free_port(spec.serve.port)  # a port that is taken: one sentence, at once
    device = models.resolve_device(spec.device)
    found = [tasks.resolve(name, spec.task_limit) for name in spec.tasks]  # before any model
    for place in (spec.model.placement, spec.model.baseline_placement):
        if place is not None and place.device_map:
            models.check_device_map(place.device_map)
    events.stage("Finding the model", None)
    files = models.resolve(spec.model)
    tokenizer = models.load_tokenizer(files, spec.model)
    for config in spec.configs:  # a checkpoint of another model is refused before any pass
        backends.get(config).validate(files, spec.model, config)
    windows, bos = data.text_windows(data.read_sources(spec.data), tokenizer, spec.data)
    if spec.until_decided is not None:  # any prefix of the windows is a random sample
        windows = windows.shuffled(spec.seed)
    settings = _settings(spec, windows, device, bos)
    settings["tasks"] = [t.fingerprint() for t in found]
    return RunContext(
        spec,
        device,
        files,
        tokenizer,
        windows,
        " + ".join(windows.sources),
        settings,
        digest(settings),
        events,
        threads or torch.get_num_threads(),
        tasks=found,
    )
