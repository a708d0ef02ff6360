"""Scored logits of a batch of windows, made as the passes read them: from the model's final
hidden states, a slice of rows at a time, so a window's (positions, vocabulary) logits are
never held whole (at 8k tokens and a 49k vocabulary they would be 1.6 GB in float32); and,
for a config with a KV cache (``config.kv``), through that cache a chunk at a time.

A full-window forward pass never reads a cache, and transformers' quantized cache hands a
prefill back unquantized, so a cache's effect on accuracy is only seen when the text goes
through it in chunks: each token then attends to the history the cache holds (quantized past
its residual), as in decoding, plus the unquantized rest of its own chunk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from quantscope.config.kv import KvSpec
from quantscope.data import Windows
from quantscope.evaluate.device import accepts, model_device, steady_heap

# Above this many bytes of a batch's float32 logits the head is applied a slice of rows at a
# time (an 8k window's are 805 MB at a 49k vocabulary); below, the model's own forward makes
# them at once, as before, so short windows' numbers stay exactly what they were.
SLICE_ABOVE = 256 * 2**20

# Output heads that are not a plain linear map of the final hidden states: these models get
# their logits from their own forward (held per batch) instead of row slices of the head.
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")


class Rows:
    """A window's scored logits (n, V), computed when sliced: ``rows[a:b]`` applies the output
    head to those hidden states only. Wraps a logits tensor as is when there is no head."""

    def __init__(self, hidden: torch.Tensor, head: Any = None) -> None:
        self.hidden, self.head = hidden, head

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def __getitem__(self, rows: slice) -> torch.Tensor:
        if self.head is None:
            return self.hidden[rows]
        with torch.no_grad():
            return self.head(self.hidden[rows])


class Scratch:
    """One float32 (rows, V) tensor per pass, reused for every piece of logits: a new one per
    piece is over glibc's mmap threshold as the passes fix it (``device.steady_heap``), so
    each would be a fresh mmap, page-faulted in every time; one that lives as long as the
    pass is faulted in once (and, unlike pieces small enough for the heap, does not grow it)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def get(self, like: torch.Tensor) -> torch.Tensor:
        rows, vocab = like.shape
        b = self.buffer
        if b is None or b.shape[0] < rows or b.shape[1] != vocab or b.device != like.device:
            b = self.buffer = torch.empty((rows, vocab), device=like.device)
        return b[:rows]

    def as_float(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` in float32: itself when it is, else copied into the scratch tensor."""
        return logits if logits.dtype == torch.float32 else self.get(logits).copy_(logits)


def output_head(model: Any) -> Any:
    """The model's output head when its logits are exactly ``head(final hidden states)``
    (transformers models whose decoder can be called alone), else None."""
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None or not isinstance(model, torch.nn.Module):
        return None
    config = getattr(model, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _HEAD_EXTRAS):
        return None
    head = get_head()
    return head if isinstance(head, torch.nn.Module) and get_decoder() is not None else None


def make_cache(model: Any, kv: KvSpec) -> Any:
    """A fresh transformers cache for ``kv`` (the unquantized ``DynamicCache`` or the
    quanto/HQQ ``QuantizedCache``)."""
    from transformers import DynamicCache, QuantizedCache

    if not kv.backend:
        return DynamicCache(config=model.config)
    return QuantizedCache(
        kv.backend,
        model.config,
        nbits=int(kv.bits),
        axis_key=kv.axis,
        axis_value=kv.axis,
        q_group_size=kv.group,
        residual_length=kv.residual,
    )


def cache_kwargs(model: Any, kv: KvSpec | None) -> dict[str, Any]:
    """What a forward or ``generate`` call takes to use a fresh cache for ``kv`` (nothing for
    no cache or a llama.cpp one, which the loaded GGUF model holds itself)."""
    if kv is None or kv.engine != "torch":
        return {}
    name = "cache" if accepts(model, "cache") else "past_key_values"  # transformers ≥ 5.2x
    return {name: make_cache(model, kv)}


def through_cache(
    model: Any, ids: torch.Tensor, kv: KvSpec, head: Any, cache: Any = None
) -> torch.Tensor:
    """Final hidden states (B, C, H) — or logits (B, C, V) when ``head`` is None — of
    ``ids`` (B, C) fed ``kv.chunk`` tokens at a time through a cache made for ``kv``."""
    cache = make_cache(model, kv) if cache is None else cache
    call = model.get_decoder() if head is not None else model
    name = "cache" if accepts(call, "cache") else "past_key_values"  # transformers ≥ 5.2x
    parts = []
    for start in range(0, ids.shape[1], kv.chunk):
        piece = ids[:, start : start + kv.chunk]
        out = call(input_ids=piece, use_cache=True, **{name: cache})
        parts.append(out.last_hidden_state if head is not None else out.logits)
    return torch.cat(parts, dim=1)


def scored_logits(
    model: Any, windows: Windows, batch_size: int, kv: KvSpec | None = None
) -> Iterator[list[tuple[Rows, torch.Tensor]]]:
    """Per batch of windows, per window: ``(logits, targets (n,))`` of its scored rows, the
    logits a :class:`Rows` (slice it to compute them).

    Only the positions a batch scores reach the output head (half of them when stride =
    context/2). ``kv`` (a torch cache) feeds the windows through it in chunks; a llama.cpp
    cache type is the loaded GGUF model's own and changes nothing here.
    """
    device = model_device(model)
    head = output_head(model)
    trim = accepts(model, "logits_to_keep")
    cached = kv is not None and kv.engine == "torch"
    context = windows.ids.shape[1]
    vocab = getattr(getattr(model, "config", None), "vocab_size", 0) or 0
    for _, ids_np, score_from in windows.batches(batch_size):
        ids = torch.from_numpy(ids_np).to(device)  # (B, C)
        keep = context - int(score_from.min()) + 1
        big = len(ids_np) * keep * vocab * 4 > SLICE_ABOVE
        if big:  # many transient slices: they go back to the system when freed
            steady_heap()
        head_now = head if cached or big else None  # small: the model's own logits
        with torch.no_grad():
            if cached:
                assert kv is not None
                out = through_cache(model, ids, kv, head)[:, -keep:]
            elif head_now is not None:
                out = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
                out = out[:, -keep:]  # (B, keep, H)
            else:
                extra = {"logits_to_keep": keep} if trim else {}
                out = model(input_ids=ids, use_cache=False, **extra).logits[:, -keep:]
        first = context - keep  # window position of out[:, 0]
        # position j-1 predicts token j
        yield [
            (Rows(out[b, start - 1 - first : -1], head_now), ids[b, start:])
            for b, start in enumerate(score_from.tolist())
        ]
