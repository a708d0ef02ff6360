"""What a KV cache costs and buys at depth: the bytes it holds after ``d`` tokens of context
(measured from its tensors, with the formula's prediction beside them), and prompt and decode
speed with ``d`` tokens already cached — llama-bench's ``pp512 @ d4096`` / ``tg128 @ d4096``
(here ``prefill`` and ``steps`` tokens, smaller by default for CPUs).

The results are flat metrics keyed by depth: ``kv_bytes@4096``, ``kv_bytes_pred@4096``,
``prefill_tps@4096``, ``decode_tps@4096``, ``peak_rss_mb@4096``.

>>> at_depth_keys(1024)
['kv_bytes@1024', 'kv_bytes_pred@1024', 'prefill_tps@1024', 'decode_tps@1024', 'peak_rss_mb@1024']
"""

from __future__ import annotations

import time
from typing import Any

import torch

from quantscope.config.kv import GGML_BYTES_PER_32, KvSpec, parse_kv
from quantscope.evaluate.device import accepts, model_device, sync
from quantscope.evaluate.efficiency import PeakMemory
from quantscope.evaluate.scoring import make_cache
from quantscope.results import depths_in

__all__ = ["DEFAULT_DEPTHS", "at_depth_keys", "depth_metrics", "depths_for", "depths_in"]

DEFAULT_DEPTHS = (0, 1024, 4096, 8192)
_FILL = 512  # tokens per call while filling the cache to a depth (not timed)


def depths_for(requested: tuple[int, ...] | None, kv: KvSpec | None, config: Any) -> list[int]:
    """The depths to measure a config at: those requested, else the defaults for a config
    with a KV cache (none without one), never past the model's positions.

    >>> from types import SimpleNamespace as NS
    >>> depths_for(None, parse_kv("q8_0"), NS(max_position_embeddings=2048))
    [0, 1024]
    >>> depths_for(None, None, NS(max_position_embeddings=2048))
    []
    """
    chosen = requested if requested is not None else (DEFAULT_DEPTHS if kv else ())
    limit = getattr(config, "max_position_embeddings", None) or max(chosen, default=0)
    return [d for d in chosen if d <= limit]


def at_depth_keys(depth: int) -> list[str]:
    return [
        f"{k}@{depth}"
        for k in ("kv_bytes", "kv_bytes_pred", "prefill_tps", "decode_tps", "peak_rss_mb")
    ]


def tensor_bytes(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of every tensor reachable from ``obj`` (attributes, lists, dicts; quanto's
    packed tensors through their inner tensors), each storage counted once."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        flatten = getattr(type(obj), "__tensor_flatten__", None)
        if flatten is not None and type(obj) is not torch.nn.Parameter:
            names, _ = flatten(obj)
            return sum(tensor_bytes(getattr(obj, n), seen) for n in names)
        if obj.numel() == 0:
            return 0
        ptr = obj.untyped_storage().data_ptr()
        if ptr in seen:
            return 0
        seen.add(ptr)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(o, seen) for o in obj)
    if isinstance(obj, dict):
        return sum(tensor_bytes(o, seen) for o in obj.values())
    if hasattr(obj, "__dict__") and not isinstance(obj, type) and id(obj) not in seen:
        seen.add(id(obj))  # a cache's layers and their states (never a module or a config)
        return sum(
            tensor_bytes(o, seen) for o in vars(obj).values() if not isinstance(o, torch.nn.Module)
        )
    return 0


def cache_values_per_token(config: Any) -> int:
    """Values a KV cache holds per token: K and V of every layer's KV heads."""
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim


def predicted_bytes(
    config: Any, kv: KvSpec, tokens: int, dtype_bytes: int, fed: int | None = None
) -> float:
    """The formula's cache bytes after ``tokens`` fed ``fed`` at a time (default: the cache's
    chunk): values × bytes per value, where a quantized torch cache holds ``bits``/8 per value
    plus a scale and a zero point (model dtype) per group of ``group`` values, except for the
    tokens still in its residual (full precision; :func:`unquantized_tail`)."""
    values = cache_values_per_token(config)
    if kv.engine == "gguf":
        k, v = (GGML_BYTES_PER_32[t] / 32 for t in (kv.cache, kv.type_v))
        return values / 2 * (k + v) * tokens
    if not kv.backend:
        return float(values * dtype_bytes * tokens)
    held = unquantized_tail(tokens, fed or kv.chunk, kv.residual)
    per_value = kv.bits / 8 + 2 * dtype_bytes / kv.group
    return values * (per_value * (tokens - held) + dtype_bytes * held)


def unquantized_tail(tokens: int, fed: int, residual: int) -> int:
    """Tokens transformers' quantized cache still holds in full precision after ``tokens`` fed
    ``fed`` at a time: the first call is quantized whole; later ones wait in the residual until
    it would reach ``residual``, when everything is quantized again.

    >>> [unquantized_tail(n, fed, 128) for n, fed in ((256, 16), (200, 128), (64, 128))]
    [112, 72, 0]
    """
    held, seen = 0, min(fed, tokens)
    while seen < tokens:
        step = min(fed, tokens - seen)
        held = 0 if held + step >= residual else held + step
        seen += step
    return held


def depth_metrics(
    model: Any,
    kv: KvSpec | None,
    depths: tuple[int, ...],
    vocab: int,
    prefill: int = 128,
    steps: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """Cache bytes (measured and predicted) at each depth, and prompt and decode speed with
    that many tokens cached; ``kv`` None measures transformers' default (dynamic) cache."""
    kv = kv or parse_kv("dynamic")
    gen = torch.Generator().manual_seed(seed)

    def measure(depth: int) -> tuple[int, float, float]:
        ids = torch.randint(0, vocab, (1, depth + prefill + steps), generator=gen)
        if hasattr(model, "at_depth"):  # llama.cpp: a context of its own, its cache types
            found: tuple[int, float, float] = model.at_depth(ids[0].tolist(), depth, prefill, steps)
            return found
        return _torch_at_depth(model, kv, ids, depth, prefill, steps)

    measure(0)  # warm-up, not kept
    out: dict[str, float] = {}
    for depth in depths:
        with PeakMemory() as peak:
            nbytes, prefill_s, decode_s = measure(depth)
        fed = min(_FILL, kv.chunk) if kv.backend else _FILL
        predicted = predicted_bytes(model.config, kv, depth, _dtype_bytes(model), fed)
        values = (float(nbytes), predicted, prefill / prefill_s, steps / decode_s, peak.rss_mb)
        out.update(zip(at_depth_keys(depth), values, strict=True))
    return out


def _dtype_bytes(model: Any) -> int:
    params = [p for p in model.parameters() if p.is_floating_point()]
    return params[0].element_size() if params and params[0].numel() else 2


def _torch_at_depth(
    model: Any, kv: KvSpec, ids: torch.Tensor, depth: int, prefill: int, steps: int
) -> tuple[int, float, float]:
    """Fill a cache to ``depth`` (its bytes then), time ``prefill`` tokens in one call, then
    ``steps`` greedy one-token steps."""
    device = model_device(model)
    ids = ids.to(device)
    cache = make_cache(model, kv)
    name = "cache" if accepts(model, "cache") else "past_key_values"  # transformers ≥ 5.2x

    def call(piece: torch.Tensor) -> torch.Tensor:
        out = model(input_ids=piece, use_cache=True, logits_to_keep=1, **{name: cache})
        return out.logits[:, -1:].argmax(-1)

    with torch.no_grad():
        fill = min(_FILL, kv.chunk) if kv.backend else _FILL  # as predicted_bytes is told
        for start in range(0, depth, fill):
            call(ids[:, start : min(start + fill, depth)])
        nbytes = tensor_bytes(cache)
        sync(device)
        began = time.perf_counter()
        nxt = call(ids[:, depth : depth + prefill])
        sync(device)
        prefill_s = time.perf_counter() - began
        began = time.perf_counter()
        for _ in range(steps):
            nxt = call(nxt)
        sync(device)
        decode_s = time.perf_counter() - began
    return nbytes, prefill_s, decode_s
