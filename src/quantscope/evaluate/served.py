"""The passes of a config served by an engine (``backends.vllm``), all over HTTP to its server
on 127.0.0.1: the accuracy pass at the engine's own speed, and the load test.

**Accuracy.** Each window is one completion request of its token ids with ``max_tokens=1``
that carries a scoring job (``vllm_xargs``): a small file with, per scored position, the ids
the comparison needs (:func:`~quantscope.evaluate.accuracy.reference_ids`: the true token,
the reference's top k and tail samples). quantscope's plug-in in the server computes the
log-probabilities at those ids from vLLM's own logits as the prefill runs and writes them
beside the job (``workers/vllm_plugin.py``); the comparison itself is the torch pass's
(:func:`~quantscope.evaluate.accuracy.compare_gathered`). 321 numbers per token cross the
process boundary instead of a vocabulary, so the pass runs near vLLM's own prefill speed
(``benchmarks/vllm_pass.py``). Several windows are in flight at once, so the engine batches
them as it would any requests.

**Load.** A fixed request set (``ServeSpec``: prompts cut from the evaluation text at seeded
places, a fixed number of output tokens with EOS ignored) is sent at each concurrency level
as streamed completions; from each stream's arrival times: time to first token, the gaps
between tokens (inter-token latency), and output tokens per second over the level's wall
time — what ``vllm bench serve`` reports, measured the same way (a chunk that carries text is
a token's arrival).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantscope.config import ServeSpec
from quantscope.data import Windows
from quantscope.evaluate.accuracy import (
    Advance,
    Gathered,
    TokenStats,
    compare_gathered,
    reference_ids,
    stats_of,
)
from quantscope.reference import Cursor
from quantscope.toolserver import ServerDied

IN_FLIGHT = 8  # windows sent at once: enough for the engine to batch prefills


def _noop(_: int) -> None:
    return None


def _session(timeout: float = 600) -> Any:
    import aiohttp

    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))


async def _post(session: Any, model: Any, body: dict[str, Any]) -> Any:
    """POST a completion; its JSON, or :class:`ServerDied` with how the server ended."""
    import aiohttp

    try:
        async with session.post(f"{model.server.url}/v1/completions", json=body) as answer:
            if answer.status != 200:
                said = (await answer.text())[:300]
                raise ServerDied(f"vLLM answered {answer.status}: {said}")
            return await answer.json()
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        raise ServerDied(f"vLLM stopped answering ({model.server.why()}).") from None


def _job(folder: Path, index: int, ids: np.ndarray, start: int, cursor: Cursor) -> Any:
    """Write window ``index``'s scoring job; its path and the reference rows it covers."""
    targets = torch.from_numpy(ids[start:].astype(np.int64))
    ref = cursor.take(len(targets))
    path = folder / f"w{index}"
    wanted = reference_ids(targets, ref).to(torch.int32).numpy()
    tmp = folder / f"w{index}.tmp.npz"
    np.savez(tmp, first=np.int64(start - 1), ids=wanted)  # hidden position start-1 predicts start
    tmp.replace(path.with_suffix(".npz"))
    return path, ref


def _read(path: Path, rows: int) -> Gathered:
    """The plug-in's answer to a job: its chunks in position order, ``rows`` rows in all."""
    error = path.with_suffix(".error")
    if error.exists():
        raise ServerDied(f"quantscope's scorer in vLLM failed: {error.read_text()[:300]}")
    chunks = path.parent.glob(f"{path.name}.*.npz")  # PATH.<first position>.npz
    parts = sorted(
        (p for p in chunks if len(p.suffixes) == 2 and p.suffixes[0][1:].isdigit()),
        key=lambda p: int(p.suffixes[0][1:]),
    )
    loaded = [np.load(p) for p in parts]
    if sum(len(p["lp"]) for p in loaded) != rows:
        raise ServerDied(
            "vLLM answered without quantscope's scores: is its plug-in loaded (VLLM_PLUGINS)?"
        )
    lp = np.concatenate([p["lp"] for p in loaded])
    top = np.concatenate([p["argmax"] for p in loaded])
    bad = np.concatenate([p["bad"] for p in loaded])
    for p in parts:
        p.unlink()
    path.with_suffix(".npz").unlink(missing_ok=True)
    return Gathered(torch.from_numpy(lp), torch.from_numpy(top).long(), torch.from_numpy(bad))


def compare_served(
    model: Any,
    windows: Windows,
    cursor: Cursor,
    batch_size: int,
    advance: Advance = _noop,
    stop: Callable[[TokenStats], bool] | None = None,
    in_flight: int = IN_FLIGHT,
) -> TokenStats:
    """The served config scored against the reference, window by window in order (as
    :func:`~quantscope.evaluate.accuracy.compare_pass`; ``stop`` is asked every
    ``batch_size`` windows)."""
    return asyncio.run(_compare(model, windows, cursor, batch_size, advance, stop, in_flight))


async def _compare(
    model: Any,
    windows: Windows,
    cursor: Cursor,
    batch_size: int,
    advance: Advance,
    stop: Callable[[TokenStats], bool] | None,
    in_flight: int,
) -> TokenStats:
    out: dict[str, list[np.ndarray]] = {}
    pending: list[tuple[Any, Path, Any]] = []
    starts = windows.score_from.tolist()
    async with _session() as session:

        def send(i: int) -> None:
            path, ref = _job(model.jobs, i, windows.ids[i], int(starts[i]), cursor)
            body = {
                "model": model.name,
                "prompt": [int(t) for t in windows.ids[i]],
                "max_tokens": 1,
                "vllm_xargs": {"quantscope_job": str(path)},
            }
            pending.append((asyncio.ensure_future(_post(session, model, body)), path, ref))

        sent = 0
        try:
            for done in range(len(windows.ids)):
                while sent < len(windows.ids) and sent < done + in_flight:
                    send(sent)
                    sent += 1
                task, path, ref = pending.pop(0)
                await task
                found = compare_gathered(_read(path, len(ref)), ref)
                for name, value in found.items():
                    out.setdefault(name, []).append(value)
                advance(len(ref))
                last = done + 1 == len(windows.ids)
                look = stop is not None and ((done + 1) % batch_size == 0 or last)
                if look and stop(stats_of(out)):  # type: ignore[misc]
                    break
        finally:
            for task, _, _ in pending:
                task.cancel()
            await asyncio.gather(*(t for t, _, _ in pending), return_exceptions=True)
    return stats_of(out)


def request_set(tokens: np.ndarray, spec: ServeSpec, level: int, seed: int) -> list[list[int]]:
    """The prompts sent at concurrency ``level``: ``spec.count(level)`` pieces of
    ``spec.prompt_tokens`` tokens of ``tokens`` at seeded places (the same for every config;
    overlapping pieces are fine: prefix caching is off)."""
    rng = np.random.default_rng([seed, level])
    span = max(1, len(tokens) - spec.prompt_tokens)
    starts = rng.integers(0, span, spec.count(level))
    return [[int(t) for t in tokens[s : s + spec.prompt_tokens]] for s in starts]


async def _stream(session: Any, model: Any, prompt: list[int], out: int) -> dict[str, Any]:
    """One streamed request: time to first token, the gaps after it, tokens generated."""
    import aiohttp

    body = {
        "model": model.name,
        "prompt": prompt,
        "max_tokens": out,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft, last, gaps, tokens = float("nan"), start, [], 0
    try:
        async with session.post(f"{model.server.url}/v1/completions", json=body) as answer:
            if answer.status != 200:
                raise ServerDied(f"vLLM answered {answer.status}: {(await answer.text())[:300]}")
            async for raw in answer.content:
                line = raw.decode().strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                now = time.perf_counter()
                chunk = json.loads(line[5:])
                if chunk.get("usage"):
                    tokens = int(chunk["usage"]["completion_tokens"])
                choices = chunk.get("choices") or []
                if choices and choices[0].get("text"):
                    if ttft != ttft:  # the first token
                        ttft = now - start
                    else:
                        gaps.append(now - last)
                    last = now
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        raise ServerDied(f"vLLM stopped answering ({model.server.why()}).") from None
    return {"ttft": ttft, "gaps": gaps, "tokens": tokens, "end": time.perf_counter()}


async def _level(model: Any, prompts: list[list[int]], level: int, out: int) -> dict[str, float]:
    gate = asyncio.Semaphore(level)
    async with _session() as session:
        await _stream(session, model, prompts[0], 2)  # warm: the first request of a level

        async def one(prompt: list[int]) -> dict[str, Any]:
            async with gate:
                return await _stream(session, model, prompt, out)

        start = time.perf_counter()
        done = await asyncio.gather(*(one(p) for p in prompts))
    wall = max(d["end"] for d in done) - start
    ttft = np.array([d["ttft"] for d in done]) * 1e3
    gaps = np.array([g for d in done for g in d["gaps"]]) * 1e3
    tokens = sum(d["tokens"] for d in done)
    return {
        "out_tps": tokens / wall,
        "req_s": len(done) / wall,
        "ttft_p50_ms": float(np.percentile(ttft, 50)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "itl_p50_ms": float(np.percentile(gaps, 50)) if len(gaps) else float("nan"),
        "itl_p99_ms": float(np.percentile(gaps, 99)) if len(gaps) else float("nan"),
        "itl_mean_ms": float(gaps.mean()) if len(gaps) else float("nan"),
        "requests": float(len(done)),
        "out_tokens": float(tokens),
        "wall_s": wall,
    }


def load_metrics(
    model: Any, tokens: np.ndarray, spec: ServeSpec, seed: int, advance: Advance = _noop
) -> dict[str, float]:
    """The load test at every concurrency level (``serve_c{N}_...`` metrics), and what the
    lowest level says of one stream: ``decode_tps`` (1 / mean inter-token latency) and
    ``prefill_tps`` (prompt tokens / median time to first token) when that level is 1."""
    found: dict[str, float] = {}
    for level in spec.concurrency:
        prompts = request_set(tokens, spec, level, seed)
        metrics = asyncio.run(_level(model, prompts, level, spec.output_tokens))
        found.update({f"serve_c{level}_{k}": v for k, v in metrics.items()})
        advance(1)
    if 1 in spec.concurrency:
        found["decode_tps"] = 1e3 / found["serve_c1_itl_mean_ms"]
        found["prefill_tps"] = spec.prompt_tokens / (found["serve_c1_ttft_p50_ms"] / 1e3)
    return found
