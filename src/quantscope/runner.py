"""RunSpec → Results: the only orchestration (resume, reference cache, progress, failures).

Each config is measured, stored and committed before the next one starts; a config that
cannot run here is skipped with its reason, one that fails is reported and the run goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from quantscope import backends, capability, chaos, evaluate, isolation, models, quiet
from quantscope.backends import lora
from quantscope.cache import cache_dir, check_room, made, no_room, room_error
from quantscope.config import QuantConfig, RunSpec, precision_config
from quantscope.context import RunContext, prepare, result_key
from quantscope.errors import ToolError, Unavailable, UserError
from quantscope.evaluate.device import intra_op_threads
from quantscope.events import Events, LogEvents
from quantscope.measure import answer_tasks, free_memory, measure
from quantscope.preflight import check_memory
from quantscope.provenance import digest
from quantscope.reference import FORMAT as REFERENCE_FORMAT
from quantscope.reference import Reference, ReferenceCache
from quantscope.results import Outcome, Result, RunReport, Status
from quantscope.store import Store, default_store

__all__ = [
    "Events",
    "LogEvents",
    "RunContext",
    "config_task",
    "evaluate_config",
    "prepare",
    "result_key",
    "run",
]


def ensure_reference(ctx: RunContext) -> None:
    """Find the baseline's reference pass, generations and task answers in the cache, or
    compute them, each once even when several processes share the cache (``cache.made``).

    The reference is keyed by model, windows, its sizes, seed, dtype, device type and library
    versions; the generations by model, prompts and length; task answers by the tasks. The
    baseline is loaded only when something is missing (and always in exact mode), and run
    with the run's intra-op thread count, like every config.
    """
    with intra_op_threads(ctx.threads):
        _ensure_reference(ctx)


def _common(ctx: RunContext) -> tuple[Any, ...]:
    s = ctx.settings
    return (ctx.files.fingerprint, ctx.spec.model.dtype.value, s["device_type"], s["versions"])


def _reference_cache(ctx: RunContext) -> ReferenceCache:
    """Where the baseline's reference pass of this run is (or will be) kept."""
    spec = ctx.spec
    key = digest(
        REFERENCE_FORMAT,
        *_common(ctx),
        ctx.windows.fingerprint,
        spec.ref_topk,
        spec.ref_samples,
        spec.seed,
    )
    return ReferenceCache(cache_dir() / "reference" / key)


# bytes a run writes, measured on the bundled model: the reference keeps 5.6 B per scored
# token and kept id compressed (1,791 B/token at top-256 + 64 samples), a result's per-token
# values 13 B/token; with room to spare for its rows, generations and the log
REFERENCE_B, VALUES_B, SPARE = 5.6, 13.0, 1.5


def room_needed(ctx: RunContext, configs: int) -> float:
    """About how many bytes measuring ``configs`` configs of this run will write."""
    n = ctx.windows.n_scored
    need = configs * (n * VALUES_B + (64 << 10))  # a row, its generations: < 64 KB
    if not _reference_cache(ctx).exists():
        need += n * (ctx.spec.ref_topk + ctx.spec.ref_samples + 1) * REFERENCE_B
    return SPARE * need


def _ensure_reference(ctx: RunContext) -> None:
    spec, settings = ctx.spec, ctx.settings
    common = _common(ctx)
    gen_key = digest("generations-2", *common, list(spec.prompts), spec.max_new_tokens)
    folder = cache_dir() / "reference"
    if spec.exact:
        _baseline(ctx)
    cache = _reference_cache(ctx)
    if not cache.exists():

        def chunks() -> Iterator[Reference]:  # the baseline loads only if this process makes it
            ctx.events.stage("Reference pass (baseline)", ctx.windows.n_scored)
            yield from evaluate.reference_chunks(
                _baseline(ctx),
                ctx.windows,
                spec.ref_topk,
                spec.batch_size,
                ctx.events.advance,
                tail_samples=spec.ref_samples,
                seed=spec.seed,
            )

        cache.write(chunks())
    ctx.reference = cache
    ctx.base_generations = _cached_json(
        folder / f"{gen_key}.generations.json",
        "Baseline generations",
        ctx,
        lambda: evaluate.generate(_baseline(ctx), ctx.tokenizer, spec.prompts, spec.max_new_tokens),
    )
    if ctx.tasks:
        task_path = folder / f"{digest(*common, settings['tasks'])}.tasks.json"
        ctx.base_answers = _cached_json(
            task_path, "Baseline tasks", ctx, lambda: answer_tasks(ctx, _baseline(ctx)), whole=True
        )
    if not spec.exact:
        ctx.baseline_model = None
        free_memory()


def _baseline(ctx: RunContext) -> Any:
    """The baseline model, loaded once per run (only when something needs it)."""
    if ctx.baseline_model is None:
        chaos.point("baseline-load")
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
    path: Path, label: str, ctx: RunContext, compute: Callable[[], Any], whole: bool = False
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
    need = room_needed(ctx, len(spec.configs))
    check_room(cache_dir(), need, "this run (its reference pass and results)")
    outcomes = []
    with Store(spec.store_path or default_store()) as store:
        run_id = store.new_run(ctx.files.name, ctx.settings)
        for position, config in enumerate(spec.configs):
            try:
                outcome = _one(ctx, store, config, run_id, position)
            except Exception as err:  # a full disk ends the run, with what is stored kept
                if no_room(err):
                    raise _full(err, need) from None
                raise
            outcomes.append(outcome)
            events.outcome(outcome)
    return RunReport(run_id, outcomes, ctx.settings, ctx.provenance(store.path))


def _full(err: BaseException, need: float) -> Exception:
    """The sentence for a full disk met while measuring: the folder it met it in."""
    where = Path(getattr(err, "filename", None) or cache_dir())
    return room_error(where if where.is_dir() else where.parent, need, "this run")


def _one(ctx: RunContext, store: Store, config: QuantConfig, run_id: str, position: int) -> Outcome:
    reused = ctx.reuse(store, run_id, config, position)
    if reused is not None:
        return reused
    key = ctx.key(config)
    measured = _isolated if isolating(ctx) else evaluate_config
    outcome = measured(ctx, config, key)
    ctx.record(store, run_id, config, position, outcome)
    return outcome


# --isolate by default from this size of the baseline's weight files: a fresh process costs
# about 4 s a config (measured: 4.1 s, 15% of the bundled 0.5 GB model's 27.6 s a config)
AUTO_ISOLATE_BYTES = 1 << 30


def isolating(ctx: RunContext) -> bool:
    """Whether this run measures each config in a process of its own (``--isolate``; by
    default, when the baseline's weights take :data:`AUTO_ISOLATE_BYTES` or more)."""
    if ctx.spec.isolate is not None:
        return ctx.spec.isolate
    files = models.weight_files(ctx.files.folder, safetensors_only=False)
    return sum(p.stat().st_size for p in files) >= AUTO_ISOLATE_BYTES


def config_task(spec: RunSpec, threads: int, config: QuantConfig, key: str) -> Outcome:
    """A child process (``--isolate``) or a Ray task: one config measured against the
    reference on disk, with the driver's intra-op thread count (so the numbers are the same
    whichever process measures them); never stored here."""
    return evaluate_config(prepare(spec, LogEvents(), threads), config, key)


def _isolated(ctx: RunContext, config: QuantConfig, key: str) -> Outcome:
    """``config`` measured in a child process of its own: whatever ends that process (a
    segfault, an abort, the out-of-memory killer, --config-timeout) fails this config with
    how it ended, and the run goes on. The reference is made here first (the baseline is the
    only model this process loads); the child reads it from disk."""
    if ctx.reference is None:
        ensure_reference(ctx)
    ctx.events.stage(f"{config.display}: measuring (in a process of its own)", None)
    spec = ctx.spec
    ended = isolation.call(
        "quantscope.runner:config_task",
        (spec, ctx.threads, config, key),
        timeout=spec.config_timeout,
        memory_mb=spec.config_memory_mb,
    )
    if ended.ok:
        outcome: Outcome = ended.value
        return outcome
    reason = f"{config.display} did not finish: {ended.reason}"
    return Outcome(config.display, Status.FAILED, reason, None, ctx.files.name)


def evaluate_config(ctx: RunContext, config: QuantConfig, key: str) -> Outcome:
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
            lora.check(config)
        if ctx.reference is None:
            ensure_reference(ctx)
        check_memory(ctx, config)  # after the reference: the baseline is freed by then
        with intra_op_threads(ctx.threads):
            result, token_values = measure(ctx, config, key)
    except Unavailable as err:
        free_memory()
        return Outcome(config.display, Status.SKIPPED, err.reason, None, model)
    except (UserError, ToolError) as err:
        free_memory()
        return Outcome(config.display, Status.FAILED, str(err), None, model)
    except Exception as err:  # a backend library failing fails this config, not the run
        if no_room(err):  # a full disk is the run's: every config after it would fail too
            raise
        quiet.debug("config %s failed", config.name, exc_info=True)
        free_memory()
        return Outcome(config.display, Status.FAILED, f"{type(err).__name__}: {err}", None, model)
    result = Result.from_json(result.to_json())  # exactly what a rerun will read back
    return Outcome(config.display, Status.MEASURED, "", result, model, token_values)
