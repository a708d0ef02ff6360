"""RunSpec → Results: the only orchestration (resume, reference cache, progress, failures).

Each config is measured, stored and committed before the next one starts; a config that
cannot run here is skipped with its reason, one that fails is reported and the run goes on.

>>> from quantscope.config import RunSpec
>>> callable(run)
True
"""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from quantscope import backends, data, evaluate, models, tasks
from quantscope.config import QuantConfig, RunSpec, precision_config
from quantscope.errors import UserError
from quantscope.provenance import digest, hardware, versions
from quantscope.reference import FORMAT as REFERENCE_FORMAT
from quantscope.reference import ReferenceCache
from quantscope.results import Outcome, Result, RunReport
from quantscope.store import Store, now

log = logging.getLogger(__name__)


class Events(Protocol):
    """What the runner tells its caller while it works (the CLI draws progress bars)."""

    def stage(self, label: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...

    def outcome(self, outcome: Outcome) -> None: ...


class LogEvents:
    """Events that only log (the default for the Python API)."""

    def stage(self, label: str, total: int | None) -> None:
        log.info("%s", label)

    def advance(self, n: int) -> None:
        return None

    def outcome(self, outcome: Outcome) -> None:
        log.info("%s: %s %s", outcome.config, outcome.status, outcome.reason)


def default_store() -> Path:
    """Default results database: ``$QUANTSCOPE_CACHE/results.sqlite``."""
    return models.cache_dir() / "results.sqlite"


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
    }


def prepare(spec: RunSpec, events: Events) -> _Context:
    """Resolve the device, model files, tokenizer, text and windows of a run."""
    device = models.resolve_device(spec.device)
    events.stage("Finding the model", None)
    files = models.resolve(spec.model)
    tokenizer = models.load_tokenizer(files, spec.model)
    sources = data.read_sources(spec.data)
    bos = spec.data.bos if spec.data.bos is not None else data.adds_bos(tokenizer)
    windows = data.build_windows(
        sources, data.encoder(tokenizer), spec.data, data.prefix_token(tokenizer) if bos else None
    )
    text_name = " + ".join(windows.sources)
    settings = _settings(spec, windows, device, bos)
    found = [tasks.resolve(name, spec.task_limit) for name in spec.tasks]
    settings["tasks"] = [t.fingerprint() for t in found]
    fp = digest(settings)
    ctx = _Context(spec, device, files, tokenizer, windows, text_name, settings, fp, events)
    ctx.tasks = found
    return ctx


def result_key(ctx: _Context, config: QuantConfig) -> str:
    adapter = ""
    if config.lora:
        from quantscope.backends import lora

        adapter = lora.fingerprint(config.lora)  # a retrained adapter is measured again
    parts = (ctx.files.fingerprint, config.name, ctx.windows.fingerprint, ctx.settings_fp)
    return digest(*parts, adapter) if adapter else digest(*parts)


def ensure_reference(ctx: _Context) -> None:
    """Find the baseline's reference pass and generations in the cache, or compute them.

    The reference is keyed by model, windows, its sizes, seed, dtype, device type and library
    versions; the generations by model, prompts and length. Each is computed once.
    """
    spec, settings = ctx.spec, ctx.settings
    common = (
        ctx.files.fingerprint, spec.model.dtype.value, settings["device_type"], settings["versions"]
    )  # fmt: skip
    ref_key = digest(REFERENCE_FORMAT, *common, ctx.windows.fingerprint, spec.ref_topk,
                     spec.ref_samples, spec.seed)  # fmt: skip
    gen_key = digest("generations-2", *common, list(spec.prompts), spec.max_new_tokens)
    folder = models.cache_dir() / "reference"
    folder.mkdir(parents=True, exist_ok=True)
    cache = ReferenceCache(folder / ref_key)
    gen_path = folder / f"{gen_key}.generations.json"
    task_path = folder / f"{digest(*common, settings['tasks'])}.tasks.json"
    have_tasks = task_path.is_file() or not ctx.tasks
    if spec.exact or not (cache.exists() and gen_path.is_file() and have_tasks):
        ctx.events.stage("Loading the baseline", None)
        base = precision_config(spec.model.dtype)
        ctx.baseline_model = (
            backends.get(base.method).load(ctx.files, spec.model, base, ctx.device).model
        )
    if not cache.exists():
        ctx.events.stage("Reference pass (baseline)", ctx.windows.n_scored)
        cache.write(
            evaluate.reference_chunks(
                ctx.baseline_model, ctx.windows, spec.ref_topk, spec.batch_size,
                ctx.events.advance, tail_samples=spec.ref_samples, seed=spec.seed,
            )
        )  # fmt: skip
    ctx.reference = cache
    if gen_path.is_file():
        ctx.base_generations = json.loads(gen_path.read_text())
    else:
        ctx.events.stage("Baseline generations", None)
        ctx.base_generations = evaluate.generate(
            ctx.baseline_model, ctx.tokenizer, spec.prompts, spec.max_new_tokens
        )
        gen_path.write_text(json.dumps(ctx.base_generations))
    if ctx.tasks and task_path.is_file():
        ctx.base_answers = json.loads(task_path.read_text())
    elif ctx.tasks:
        ctx.events.stage("Baseline tasks", None)
        ctx.base_answers = _answer_tasks(ctx, ctx.baseline_model)
        if not ctx.task_errors:  # cache only a complete set of baseline answers
            task_path.write_text(json.dumps(ctx.base_answers))
    if not spec.exact:
        ctx.baseline_model = None
        _free()


def _answer_tasks(ctx: _Context, model: Any) -> dict[str, dict[str, list[bool]]]:
    """Every task's per-item correctness for ``model``. A task that cannot run (its data is
    out of reach, it generates text) is reported in ``ctx.task_errors`` and left out; the
    config's other measurements go on."""
    answers = {}
    for task in ctx.tasks:
        if task.name in ctx.task_errors:
            continue
        try:
            answers[task.name] = task.evaluate(model, ctx.tokenizer, ctx.spec.batch_size * 2)
        except UserError as err:
            ctx.task_errors[task.name] = str(err)
    return answers


def _task_results(ctx: _Context, model: Any) -> dict[str, dict[str, Any]]:
    """Per task and metric: accuracy, flips against the baseline, McNemar's p, flipped items."""
    from quantscope.metrics.tasks import compare_answers

    assert ctx.base_answers is not None
    answers = _answer_tasks(ctx, model)
    out: dict[str, dict[str, Any]] = {}
    for task in ctx.tasks:
        if task.name not in answers or task.name not in ctx.base_answers:
            continue
        for metric, values in answers[task.name].items():
            summary = compare_answers(ctx.base_answers[task.name][metric], values)
            flipped = summary["c2w_items"] + summary["w2c_items"]  # type: ignore[operator]
            summary["flipped_examples"] = {str(i): task.describe(i) for i in flipped[:10]}
            out[f"{task.name}:{metric}"] = summary
    return out


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure(ctx: _Context, config: QuantConfig, key: str) -> Result:
    """Load one config and measure accuracy, efficiency and generations."""
    spec, ref = ctx.spec, ctx.reference
    assert ref is not None and ctx.base_generations is not None
    backend = backends.get(config.method)
    torch.manual_seed(spec.seed)
    with evaluate.PeakMemory() as peak:
        ctx.events.stage(f"{config.display}: loading", None)
        loaded = backend.load(ctx.files, spec.model, config, ctx.device)
        if config.lora:
            from quantscope.backends import lora

            loaded = lora.attach(loaded, config.lora, spec.model.allow_pickle)
        ctx.events.stage(f"{config.display}: accuracy pass", ctx.windows.n_scored)
        start = time.perf_counter()
        token_stats = evaluate.compare_pass(
            loaded.model, ctx.windows, ref.cursor(), spec.batch_size, ctx.events.advance,
            baseline=ctx.baseline_model,
        )  # fmt: skip
        eval_s = time.perf_counter() - start
        footprint = evaluate.weight_footprint(loaded)  # after inference: weights as held
        clusters = ctx.windows.cluster_ids()
        accuracy = evaluate.accuracy_metrics(token_stats, clusters)
        per_source = _per_source(ctx.windows, token_stats, clusters)
        accuracy["ref_disk_bytes_per_token"] = ref.info()["disk_bytes_per_token"]
        ctx.events.stage(f"{config.display}: speed", None)
        vocab = min(len(ctx.tokenizer), loaded.model.config.vocab_size)
        speed = evaluate.speed_metrics(loaded.model, vocab, spec.speed_reps, spec.seed)
        task_results = {}
        if ctx.tasks:
            ctx.events.stage(f"{config.display}: tasks", None)
            task_results = _task_results(ctx, loaded.model)
        ctx.events.stage(f"{config.display}: generations", None)
        gens = evaluate.generate(loaded.model, ctx.tokenizer, spec.prompts, spec.max_new_tokens)
    for gen, base in zip(gens, ctx.base_generations, strict=True):
        gen["first_diff"] = evaluate.first_difference(gen["ids"], base["ids"])
    library, load_s, quantize_s = loaded.library, loaded.load_s, loaded.quantize_s
    del loaded
    _free()
    metrics = {**footprint, **accuracy, **speed, "load_s": load_s, "eval_s": eval_s}
    metrics["quantize_s"] = quantize_s
    metrics.update(peak_rss_mb=peak.rss_mb, peak_gpu_mb=peak.gpu_mb)
    return Result(
        key=key,
        config=config.display,
        model_fingerprint=ctx.files.fingerprint,
        data_fingerprint=ctx.windows.fingerprint,
        settings_fingerprint=ctx.settings_fp,
        metrics=metrics,
        generations=gens,
        meta=_meta(ctx, config, library),
        per_source=per_source,
        tasks=task_results,
        created=now(),
    )


def _per_source(
    windows: data.Windows, ts: evaluate.TokenStats, clusters: Any
) -> dict[str, dict[str, float]]:
    """Accuracy per text source when there are several (the run's row is their token-weighted
    mean: every token counts once, whichever source it came from)."""
    if len(windows.sources) < 2:
        return {}
    owner = windows.token_sources()
    return {
        name: evaluate.accuracy_metrics(ts.subset(owner == i), clusters[owner == i])
        for i, name in enumerate(windows.sources)
    }


def _meta(ctx: _Context, config: QuantConfig, library: str) -> dict[str, Any]:
    return {
        "model": ctx.files.name,
        "model_origin": ctx.files.origin,
        "model_folder": str(ctx.files.folder),
        "model_kind": ctx.files.kind.value,
        "text": ctx.text_name,
        "config": config.name,
        "label": config.label,
        "library": library,
        "task_errors": dict(ctx.task_errors),
        "settings": ctx.settings,
        "hardware": hardware(ctx.device),
    }


def run(spec: RunSpec, events: Events | None = None) -> RunReport:
    """Measure every config of ``spec`` against its baseline; store each result as it finishes.

    >>> from quantscope.config import RunSpec, DataSpec
    >>> report = run(RunSpec(data=DataSpec(tokens=1024)))  # doctest: +SKIP
    >>> report.to_dataframe()[["config", "kl_mean"]]  # doctest: +SKIP
    """
    events = events or LogEvents()
    ctx = prepare(spec, events)
    store = Store(spec.store_path or default_store())
    run_id = store.new_run(ctx.files.name, ctx.settings)
    outcomes = []
    try:
        for position, config in enumerate(spec.configs):
            outcome = _one(ctx, store, config, run_id, position)
            outcomes.append(outcome)
            events.outcome(outcome)
    finally:
        store.close()
    provenance = {
        "model": ctx.files.name,
        "model_origin": ctx.files.origin,
        "model_folder": str(ctx.files.folder),
        "model_fingerprint": ctx.files.fingerprint,
        "text": ctx.text_name,
        "data_fingerprint": ctx.windows.fingerprint,
        "store": str(store.path),
        "hardware": hardware(ctx.device),
    }
    return RunReport(run_id, outcomes, ctx.settings, provenance)


def _one(ctx: _Context, store: Store, config: QuantConfig, run_id: str, position: int) -> Outcome:
    key = result_key(ctx, config)
    stored = None if ctx.spec.force else store.get(key)
    if stored is not None:
        store.link(run_id, key, position, "reused")
        return Outcome(config.display, "reused", "already measured with these settings", stored)
    reason = backends.get(config.method).available(config.method, ctx.device)
    if not reason and config.lora:
        from quantscope.backends import lora

        reason = lora.available()
    if reason:
        return Outcome(config.display, "skipped", reason)
    try:
        if ctx.reference is None:
            ensure_reference(ctx)
        result = measure(ctx, config, key)
    except UserError as err:
        _free()
        return Outcome(config.display, "failed", str(err))
    except Exception as err:  # a backend library failing fails this config, not the run
        log.debug("config %s failed", config.name, exc_info=True)
        _free()
        return Outcome(config.display, "failed", f"{type(err).__name__}: {err}")
    result = Result.from_json(result.to_json())  # exactly what a rerun will read back
    store.put(result)
    store.link(run_id, key, position, "measured")
    return Outcome(config.display, "measured", "", result)
