"""One loaded config measured against a prepared run: the accuracy pass, efficiency, speed
(and the KV cache at depth), tasks and generations, into one ``Result``.

The runner decides what to measure and stores it; this module only measures.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from quantscope import backends, capability, chaos, evaluate, models
from quantscope.backends import LoadedModel, lora
from quantscope.config import QuantConfig
from quantscope.context import RunContext
from quantscope.metrics.sequential import Margin, Monitor
from quantscope.metrics.stats import mean_se
from quantscope.provenance import hardware, now
from quantscope.results import Result
from quantscope.tasks import answers


def free_memory() -> None:
    """Give back what a config held (and CUDA's cached blocks)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def answer_tasks(ctx: RunContext, model: Any) -> answers.Answers:
    """Every task's answers for ``model`` (tasks that cannot run go to ``ctx.task_errors``)."""
    return answers.answer(ctx.tasks, model, ctx.tokenizer, ctx.spec.batch_size * 2, ctx.task_errors)


class _Pass(NamedTuple):
    """What the accuracy pass gives: metrics, per-token values (compressed), per-source and
    by-position metrics, its seconds, and the sequential procedure's record (or None)."""

    metrics: dict[str, Any]
    token_values: bytes  # TokenValues.to_bytes()
    per_source: dict[str, Any]
    by_position: dict[str, Any]
    seconds: float
    sequential: dict[str, Any] | None


def _monitor(ctx: RunContext) -> tuple[Monitor | None, Callable[[Any], bool] | None]:
    """With ``until_decided``, the stopping rule of one config's pass: its verdicts at the
    margins, checked after each batch against group-sequential boundaries."""
    design = ctx.spec.until_decided
    if design is None:
        return None, None
    margins = []
    if design.ppl is not None:  # equivalence on the log scale, as the verdicts judge it
        margins.append(Margin("ppl", math.log1p(design.ppl / 100.0), two_sided=True))
    if design.kl is not None:  # KL cannot go below zero: below the margin is the claim
        margins.append(Margin("kl", design.kl, two_sided=False))
    monitor = Monitor(tuple(margins), ctx.windows.n_scored, spending=ctx.spec.spending)
    clusters = ctx.windows.cluster_ids()

    def stop(ts: Any) -> bool:
        if ts.bad.any():  # no accuracy to judge (non-finite logits): nothing more to learn
            return True
        seen = clusters[: len(ts.nll)]
        kl = ts.kl if ts.kl_exact is None else ts.kl_exact
        found = {"ppl": mean_se(ts.nll - ts.base_nll, seen), "kl": mean_se(kl, seen)}
        return monitor.look({m.metric: found[m.metric] for m in margins}, len(ts.nll))

    return monitor, stop


def _served(model: Any) -> bool:
    """Whether ``model`` is a config served by an engine (``backends.vllm.ServedModel``)."""
    return bool(getattr(model, "served", False))


def _max_len(ctx: RunContext) -> int:
    """The longest sequence a served config sees: a window, a load-test request, a prompt
    and its generation (rounded up to 256)."""
    serve = ctx.spec.serve
    encoded = (evaluate.encode_prompt(ctx.tokenizer, p) for p in ctx.spec.prompts)
    prompts = max((len(ids) for ids in encoded), default=0)
    longest = max(
        ctx.windows.ids.shape[1] + 1,
        serve.prompt_tokens + serve.output_tokens,
        prompts + ctx.spec.max_new_tokens,
    )
    return -(-longest // 256) * 256


def _load(ctx: RunContext, config: QuantConfig) -> Any:
    """``config`` loaded on the run's device, with its LoRA adapter attached if it names one;
    a served config's engine started."""
    backend = backends.get(config)
    if config.engine:
        ctx.events.stage(f"{config.display}: starting {config.engine}", None)
        serve = backend.serve  # type: ignore[attr-defined]
        return serve(ctx.files, ctx.spec.model, config, ctx.device, ctx.spec.serve, _max_len(ctx))
    ctx.events.stage(f"{config.display}: loading", None)
    loaded = backend.load(ctx.files, ctx.spec.model, config, ctx.device)
    if config.lora:
        loaded = lora.attach(loaded, config.lora, ctx.spec.model.allow_pickle)
    return loaded


def _accuracy(ctx: RunContext, loaded: LoadedModel, config: QuantConfig) -> _Pass:
    """The streamed comparison with the reference, through the config's KV cache if any."""
    assert ctx.reference is not None
    ctx.events.stage(f"{config.display}: accuracy pass", ctx.windows.n_scored)
    start = time.perf_counter()
    monitor, stop = _monitor(ctx)
    if _served(loaded.model):  # scored in the engine, beside its own logits
        token_stats = evaluate.compare_served(
            loaded.model,
            ctx.windows,
            ctx.reference.cursor(),
            ctx.spec.batch_size,
            ctx.events.advance,
            stop=stop,
        )
    else:

        def advance(n: int) -> None:
            ctx.events.advance(n)
            chaos.point("scoring-batch")

        token_stats = evaluate.compare_pass(
            loaded.model,
            ctx.windows,
            ctx.reference.cursor(),
            ctx.spec.batch_size,
            advance,
            baseline=ctx.baseline_model,
            kv=config.kv,
            stop=stop,
        )
    seconds = time.perf_counter() - start
    scored = np.cumsum(ctx.windows.ids.shape[1] - ctx.windows.score_from)
    windows = ctx.windows.head(int(np.searchsorted(scored, len(token_stats.nll))) + 1)
    clusters = windows.cluster_ids()
    metrics = evaluate.accuracy_metrics(token_stats, clusters)
    metrics["ref_disk_bytes_per_token"] = ctx.reference.info()["disk_bytes_per_token"]
    if monitor is not None:
        metrics["tokens_planned"] = float(ctx.windows.n_scored)
    return _Pass(
        metrics,
        evaluate.token_values(token_stats, clusters).to_bytes(),
        evaluate.per_source_metrics(windows, token_stats, clusters),
        evaluate.by_position_metrics(windows, token_stats, clusters),
        seconds,
        monitor.record() if monitor is not None else None,
    )


def _speed(ctx: RunContext, loaded: LoadedModel, config: QuantConfig) -> dict[str, float]:
    """Prefill and decode speed; the KV cache at depth when the config has one (or
    ``--depths`` asks)."""
    if _served(loaded.model):  # under load, over HTTP
        serve = ctx.spec.serve
        ctx.events.stage(f"{config.display}: load test", len(serve.concurrency))
        tokens = ctx.windows.ids.reshape(-1)
        seed, advance = ctx.spec.seed, ctx.events.advance
        found = evaluate.load_metrics(loaded.model, tokens, serve, seed, advance)
        found["server_peak_mb"] = loaded.model.server.peak_mb
        return found
    ctx.events.stage(f"{config.display}: speed", None)
    vocab = min(len(ctx.tokenizer), loaded.model.config.vocab_size)
    speed = evaluate.speed_metrics(
        loaded.model, vocab, ctx.spec.speed_reps, ctx.spec.seed, config.kv
    )
    depths = evaluate.depths_for(ctx.spec.depths, config.kv, loaded.model.config)
    if depths:
        ctx.events.stage(f"{config.display}: KV cache at depth", None)
        speed.update(evaluate.depth_metrics(loaded.model, config.kv, tuple(depths), vocab))
    return speed


def _tasks(ctx: RunContext, loaded: LoadedModel, config: QuantConfig) -> dict[str, Any]:
    """Each task compared item by item with the baseline's answers."""
    if not ctx.tasks:
        return {}
    if _served(loaded.model):
        for task in ctx.tasks:
            ctx.task_errors.setdefault(task.name, "tasks are scored in transformers, not in vLLM")
        return {}
    ctx.events.stage(f"{config.display}: tasks", None)
    assert ctx.base_answers is not None
    return answers.compare(ctx.tasks, ctx.base_answers, answer_tasks(ctx, loaded.model))


def measure(ctx: RunContext, config: QuantConfig, key: str) -> tuple[Result, bytes]:
    """Load one config and measure accuracy, efficiency and generations; the result and its
    per-token values (``TokenValues``, compressed)."""
    spec = ctx.spec
    assert ctx.base_generations is not None
    torch.manual_seed(spec.seed)
    with evaluate.PeakMemory() as peak:
        loaded = _load(ctx, config)
        try:
            found = _accuracy(ctx, loaded, config)
            footprint = evaluate.weight_footprint(loaded)  # after inference: weights as held
            placement = models.placement_of(loaded.model, ctx.device)
            speed = _speed(ctx, loaded, config)
            task_results = _tasks(ctx, loaded, config)
            ctx.events.stage(f"{config.display}: generations", None)
            gens = evaluate.generate(
                loaded.model, ctx.tokenizer, spec.prompts, spec.max_new_tokens, config.kv
            )
        finally:
            if _served(loaded.model):
                loaded.model.close()  # the server stops whatever happened
    for gen, base in zip(gens, ctx.base_generations, strict=True):
        gen["first_diff"] = evaluate.first_difference(gen["ids"], base["ids"])
    library, load_s, quantize_s = loaded.library, loaded.load_s, loaded.quantize_s
    meta = {**_meta(ctx, config, library), "kept_linears": loaded.kept, "placement": placement}
    if config.engine:
        meta["engine"] = {"name": config.engine, **spec.serve.settings()}
    if found.sequential is not None:
        meta["sequential"] = found.sequential
    del loaded
    free_memory()
    metrics = {**footprint, **found.metrics, **speed, "load_s": load_s, "eval_s": found.seconds}
    metrics["quantize_s"] = quantize_s
    metrics.update(peak_rss_mb=peak.rss_mb, peak_gpu_mb=peak.gpu_mb)
    metrics["offloaded"] = float(models.offloaded(placement, ctx.device))  # speed: not alone
    return Result(
        key=key,
        config=config.display,
        model_fingerprint=ctx.files.fingerprint,
        data_fingerprint=ctx.windows.fingerprint,
        settings_fingerprint=ctx.settings_fp,
        metrics=metrics,
        generations=gens,
        meta=meta,
        per_source=found.per_source,
        tasks=task_results,
        by_position=found.by_position,
        created=now(),
    ), found.token_values


def _meta(ctx: RunContext, config: QuantConfig, library: str) -> dict[str, Any]:
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
        "support": capability.support(config, ctx.hardware).__dict__ if ctx.hardware else {},
    }
