"""Efficiency: weight bytes as held, prefill and decode throughput, peak memory."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import torch

from quantscope.backends import LoadedModel
from quantscope.config.kv import KvSpec
from quantscope.evaluate.device import accepts, model_device, sync
from quantscope.evaluate.scoring import cache_kwargs
from quantscope.metrics import stats


def weight_footprint(loaded: LoadedModel) -> dict[str, float]:
    """Bytes of weights as held (params, buffers, quantization state), and bits per weight.

    Call it after a forward pass: some kernels repack weights at first use.

    Each tensor's bytes count once (tied embeddings count once). ``params`` is
    the logical weight count: quantized linears count in_features × out_features, however
    their data is packed.
    """
    if loaded.footprint is not None:  # a file the backend measured (GGUF)
        return dict(loaded.footprint)
    model = loaded.model
    modules = dict(model.named_modules())
    seen: set[tuple[int, int]] = set()

    def nbytes(t: torch.Tensor) -> int:
        if t.device.type == "meta":
            return 0
        if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
            # a tensor subclass (quanto, torchao) holds its data in inner tensors
            inner, _ = t.__tensor_flatten__()
            return sum(nbytes(getattr(t, name)) for name in inner)
        # A tensor's own bytes (weights loaded from safetensors may be views into one
        # shared buffer, so storage sizes would overcount); tied weights share data_ptr.
        key = (t.data_ptr(), t.nbytes)
        if key in seen:
            return 0
        seen.add(key)
        return int(t.nbytes)

    linear_bytes = linear_params = 0
    state = loaded.state()
    for name, logical in loaded.quantized.items():
        weight = getattr(modules[name], "weight", None)  # HQQ keeps it in state() instead
        tensors = [t for t in (weight, *state.get(name, [])) if isinstance(t, torch.Tensor)]
        held = sum(nbytes(t) for t in tensors)
        linear_bytes += loaded.packed.get(name, held)
        linear_params += logical
    total_bytes, params = linear_bytes, linear_params
    for p in list(model.parameters()) + list(model.buffers()):
        counted = nbytes(p)  # 0 for the quantized weights counted above
        total_bytes += counted
        if counted and isinstance(p, torch.nn.Parameter):
            params += p.numel()
    return {
        "weight_bytes": float(total_bytes),
        "weight_mb": total_bytes / 2**20,
        "params": float(params),
        "bits_per_weight": 8.0 * total_bytes / params,
        "linear_bits_per_weight": 8.0 * linear_bytes / linear_params if linear_params else math.nan,
        "quantized_linears": float(len(loaded.quantized)),
    }


def prefill_speed(model: Any, vocab: int, length: int, reps: int, seed: int) -> list[float]:
    """Tokens per second of one forward pass over ``length`` tokens, after one warm-up."""
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, length), generator=gen).to(device)
    rates = []
    with torch.no_grad():
        for rep in range(reps + 1):
            sync(device)
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            sync(device)
            if rep:  # rep 0 is the warm-up
                rates.append(length / (time.perf_counter() - start))
    return rates


def decode_speed(
    model: Any,
    vocab: int,
    prompt: int,
    steps: int,
    reps: int,
    seed: int,
    kv: KvSpec | None = None,
) -> list[float]:
    """Tokens per second of greedy one-token steps with the KV cache (transformers' default,
    or a fresh one for ``kv``), after one warm-up."""
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, prompt), generator=gen).to(device)
    name = "cache" if accepts(model, "cache") else "past_key_values"  # transformers ≥ 5.2x
    rates = []
    with torch.no_grad():
        for rep in range(reps + 1):
            out = model(input_ids=ids, use_cache=True, **cache_kwargs(model, kv))
            past, nxt = getattr(out, name), out.logits[:, -1:].argmax(-1)  # (1, 1)
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                out = model(input_ids=nxt, use_cache=True, **{name: past})
                past, nxt = getattr(out, name), out.logits[:, -1:].argmax(-1)
            sync(device)
            if rep:
                rates.append(steps / (time.perf_counter() - start))
    return rates


def speed_metrics(
    model: Any, vocab: int, reps: int, seed: int, kv: KvSpec | None = None
) -> dict[str, float]:
    """Prefill (128 tokens) and decode (24 steps after a 64-token prompt, through ``kv``'s
    cache when given) throughput."""
    out: dict[str, float] = {}
    for label, rates in (
        ("prefill_tps", prefill_speed(model, vocab, 128, reps, seed)),
        ("decode_tps", decode_speed(model, vocab, 64, 24, reps, seed, kv)),
    ):
        median, low, high = stats.median_spread(rates)
        out.update({label: median, f"{label}_min": low, f"{label}_max": high})
    return out


class PeakMemory:
    """Peak resident memory of this process (sampled every 10 ms) and of the GPU, in MiB.

    >>> with PeakMemory() as peak:
    ...     _ = bytearray(1)
    >>> peak.rss_mb > 0
    True
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.rss_mb = 0.0
        self.gpu_mb = math.nan
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            self.rss_mb = max(self.rss_mb, process.memory_info().rss / 2**20)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            self.gpu_mb = torch.cuda.max_memory_allocated() / 2**20
