"""RunSpec → Results: the only orchestration (resume, reference cache, progress, failures).

Each config is measured, stored and committed before the next one starts; a config that
cannot run here is skipped with its reason, one that fails is reported and the run goes on.

>>> from quantscope.config import RunSpec
>>> callable(run)
True
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from quantscope import backends, capability, data, evaluate, models, quiet, tasks
from quantscope.cache import cache_dir, made, maker, read_made
from quantscope.config import QuantConfig, RunSpec, precision_config
from quantscope.errors import Unavailable, UserError
from quantscope.events import Events, LogEvents
from quantscope.measure import answer_tasks, free_memory, measure
from quantscope.provenance import digest, hardware, versions
from quantscope.reference import FORMAT as REFERENCE_FORMAT
from quantscope.reference import Reference, ReferenceCache
from quantscope.results import Outcome, Result, RunReport, Status
from quantscope.store import Store

__all__ = ["Events", "LogEvents", "default_store", "run"]


def default_store() -> Path:
    """Default results database: ``$QUANTSCOPE_CACHE/results.sqlite``."""
    return cache_dir() / "results.sqlite"


@dataclass
class _Context:
    """What every config of one run shares."""

    spec: RunSpec
    device: str
    files: models.ModelFiles
    tokenizer: Any
    windows: data.Windows
    text_name: str
    settings: dict[str, Any]
    settings_fp: str
    events: Events
    reference: ReferenceCache | None = None
    base_generations: list[dict[str, Any]] | None = None
    tasks: list[Any] = field(default_factory=list)
    base_answers: dict[str, dict[str, list[bool]]] | None = None
    task_errors: dict[str, str] = field(default_factory=dict)
    baseline_model: Any = None
    hardware: capability.Device | None = None  # the device's kind and capability
    baseline_placement: dict[str, int] | None = None  # modules per device, CPU and disk


def _settings(spec: RunSpec, windows: data.Windows, device: str, bos: bool) -> dict[str, Any]:
    return {
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
    } | ({"depths": list(spec.depths)} if spec.depths is not None else {})


def prepare(spec: RunSpec, events: Events) -> _Context:
    """Resolve the device, model files, tokenizer, text and windows of a run."""
    device = models.resolve_device(spec.device)
    found = [tasks.resolve(name, spec.task_limit) for name in spec.tasks]  # before any model
    for place in (spec.model.placement, spec.model.baseline_placement):
        if place is not None and place.device_map:
            models.check_device_map(place.device_map)
    events.stage("Finding the model", None)
    files = models.resolve(spec.model)
    tokenizer = models.load_tokenizer(files, spec.model)
    windows, bos = data.text_windows(data.read_sources(spec.data), tokenizer, spec.data)
    text_name = " + ".join(windows.sources)
    settings = _settings(spec, windows, device, bos)
    settings["tasks"] = [t.fingerprint() for t in found]
    fp = digest(settings)
    ctx = _Context(spec, device, files, tokenizer, windows, text_name, settings, fp, events)
    ctx.tasks = found
    return ctx


def result_key(model_fp: str, config: QuantConfig, data_fp: str, settings_fp: str) -> str:
    """The key a result is stored under: model, config (its canonical name), windows and
    settings, and the adapter's own fingerprint (a retrained adapter is measured again)."""
    parts = (model_fp, config.name, data_fp, settings_fp)
    if not config.lora:
        return digest(*parts)
    from quantscope.backends import lora

    return digest(*parts, lora.fingerprint(config.lora))


def ensure_reference(ctx: _Context) -> None:
    """Find the baseline's reference pass, generations and task answers in the cache, or
    compute them, each once even when several processes share the cache (``cache.made``).

    The reference is keyed by model, windows, its sizes, seed, dtype, device type and library
    versions; the generations by model, prompts and length; task answers by the tasks. The
    baseline is loaded only when something is missing (and always in exact mode).
    """
    spec, settings = ctx.spec, ctx.settings
    common = (
        ctx.files.fingerprint, spec.model.dtype.value, settings["device_type"], settings["versions"]
    )  # fmt: skip
    ref_key = digest(REFERENCE_FORMAT, *common, ctx.windows.fingerprint, spec.ref_topk,
                     spec.ref_samples, spec.seed)  # fmt: skip
    gen_key = digest("generations-2", *common, list(spec.prompts), spec.max_new_tokens)
    folder = cache_dir() / "reference"
    if spec.exact:
        _baseline(ctx)
    cache = ReferenceCache(folder / ref_key)
    if not cache.exists():

        def chunks() -> Iterator[Reference]:  # the baseline loads only if this process makes it
            ctx.events.stage("Reference pass (baseline)", ctx.windows.n_scored)
            yield from evaluate.reference_chunks(
                _baseline(ctx), ctx.windows, spec.ref_topk, spec.batch_size,
                ctx.events.advance, tail_samples=spec.ref_samples, seed=spec.seed,
            )  # fmt: skip

        cache.write(chunks())
    ctx.reference = cache
    ctx.base_generations = _cached_json(
        folder / f"{gen_key}.generations.json", "Baseline generations", ctx,
        lambda: evaluate.generate(_baseline(ctx), ctx.tokenizer, spec.prompts, spec.max_new_tokens),
    )  # fmt: skip
    if ctx.tasks:
        task_path = folder / f"{digest(*common, settings['tasks'])}.tasks.json"
        ctx.base_answers = _cached_json(
            task_path, "Baseline tasks", ctx, lambda: answer_tasks(ctx, _baseline(ctx)), whole=True
        )
    if not spec.exact:
        ctx.baseline_model = None
        free_memory()


def _baseline(ctx: _Context) -> Any:
    """The baseline model, loaded once per run (only when something needs it)."""
    if ctx.baseline_model is None:
        ctx.events.stage("Loading the baseline", None)
        base = precision_config(ctx.spec.model.dtype)
        placed = models.baseline_spec(ctx.spec.model, ctx.files, ctx.device)  # offload if big
        ctx.baseline_model = backends.get(base).load(ctx.files, placed, base, ctx.device).model
        ctx.baseline_placement = models.placement_of(ctx.baseline_model, ctx.device)
    return ctx.baseline_model


class _Partial(Exception):
    """Baseline task answers with some tasks left out: used, never cached."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _cached_json(
    path: Path, label: str, ctx: _Context, compute: Callable[[], Any], whole: bool = False
) -> Any:
    """JSON computed once into the cache (``whole``: cached only when no task failed)."""

    def make(tmp: Path) -> dict[str, Any]:
        ctx.events.stage(label, None)
        value = compute()
        if whole and ctx.task_errors:
            raise _Partial(value)
        tmp.write_text(json.dumps(value))
        return {}

    try:
        made(path, make)
    except _Partial as partial:
        return partial.value
    return json.loads(path.read_text())


def run(spec: RunSpec, events: Events | None = None) -> RunReport:
    """Measure every config of ``spec`` against its baseline; store each result as it finishes.

    >>> from quantscope.config import RunSpec, DataSpec
    >>> report = run(RunSpec(data=DataSpec(tokens=1024)))  # doctest: +SKIP
    >>> report.to_dataframe()[["config", "kl_mean"]]  # doctest: +SKIP
    """
    events = events or LogEvents()
    ctx = prepare(spec, events)
    outcomes = []
    with Store(spec.store_path or default_store()) as store:
        run_id = store.new_run(ctx.files.name, ctx.settings)
        for position, config in enumerate(spec.configs):
            outcome = _one(ctx, store, config, run_id, position)
            outcomes.append(outcome)
            events.outcome(outcome)
    return RunReport(run_id, outcomes, ctx.settings, provenance(ctx, store.path))


def provenance(ctx: _Context, store: Path) -> dict[str, Any]:
    """Where a run's numbers came from: model, text, store, hardware, and which process ran
    it and which made its reference pass."""
    made_by = (read_made(ctx.reference.folder) or {}).get("made_by") if ctx.reference else None
    return {
        "model": ctx.files.name, "model_origin": ctx.files.origin,
        "model_folder": str(ctx.files.folder), "model_fingerprint": ctx.files.fingerprint,
        "text": ctx.text_name, "data_fingerprint": ctx.windows.fingerprint, "store": str(store),
        "hardware": hardware(ctx.device), "process": maker(), "reference_made_by": made_by,
        "baseline_placement": ctx.baseline_placement,
    }  # fmt: skip


def _one(ctx: _Context, store: Store, config: QuantConfig, run_id: str, position: int) -> Outcome:
    key = result_key(ctx.files.fingerprint, config, ctx.windows.fingerprint, ctx.settings_fp)
    stored = None if ctx.spec.force else store.get(key)
    if stored is not None:
        store.link(run_id, key, position, Status.REUSED)
        reason = "already measured with these settings"
        return Outcome(config.display, Status.REUSED, reason, stored, ctx.files.name)
    outcome = evaluate_config(ctx, config, key)
    if outcome.result is not None:
        store.put(outcome.result, outcome.tokens)
        store.link(run_id, key, position, Status.MEASURED)
    return outcome


def evaluate_config(ctx: _Context, config: QuantConfig, key: str) -> Outcome:
    """Measure one config of a prepared run (the reference made first when missing), or say
    why it was skipped or failed; nothing is stored here (a sweep's workers use this too)."""
    model = ctx.files.name
    try:
        backends.get(config).check(config, ctx.device)
        ctx.hardware = ctx.hardware or capability.this_device(ctx.device)
        support = capability.support(config, ctx.hardware)
        if support.level == capability.Level.UNSUPPORTED:  # said before anything loads
            raise Unavailable(config.name, support.reason)
        if config.lora:
            from quantscope.backends import lora

            lora.check(config)
        if ctx.reference is None:
            ensure_reference(ctx)
        result, tokens = measure(ctx, config, key)
    except Unavailable as err:
        free_memory()
        return Outcome(config.display, Status.SKIPPED, err.reason, None, model)
    except UserError as err:
        free_memory()
        return Outcome(config.display, Status.FAILED, str(err), None, model)
    except Exception as err:  # a backend library failing fails this config, not the run
        quiet.debug("config %s failed", config.name, exc_info=True)
        free_memory()
        return Outcome(config.display, Status.FAILED, f"{type(err).__name__}: {err}", None, model)
    result = Result.from_json(result.to_json())  # exactly what a rerun will read back
    return Outcome(config.display, Status.MEASURED, "", result, model, tokens)
