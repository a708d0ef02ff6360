"""Before a config loads: will it fit in memory? Its expected peak — the process itself, the
weights as loaded (twice for a config that quantizes a float copy), and the accuracy pass's
working set from the model's shapes and the batch — against the memory available (RAM, or
the GPU's free memory). A config that cannot fit is skipped with that sentence instead of
taking the machine down (``--no-memory-check``: measured anyway).

The constants were fitted to the bundled model's measured peaks (peak_rss_mb): fp32 1.46 GB,
bf16 1.33, bnb-int8 2.12, bnb-nf4 2.05 (4,096 tokens, batch 4, context 512; this estimate:
1.52, 1.27, 2.02, 2.02).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from quantscope import models
from quantscope.config import DType, Precision, QuantConfig
from quantscope.context import RunContext
from quantscope.errors import Unavailable

GB = 1 << 30
PROCESS_B = 0.7 * GB  # Python, torch and the libraries, resident (measured: 0.6-0.7 GB)
LOGITS_CAP_B = 256 << 20  # the pass makes logits 64 rows at a time past this (evaluate)
_BYTES = {DType.FP32: 4, DType.BF16: 2, DType.FP16: 2}


@dataclass(frozen=True)
class Peak:
    """An expected peak and its parts, in bytes."""

    weights: float
    work: float
    process: float = PROCESS_B

    @property
    def total(self) -> float:
        return self.weights + self.work + self.process


def _shapes(ctx: RunContext) -> dict[str, Any]:
    try:
        return dict(json.loads((ctx.files.folder / "config.json").read_text()))
    except (OSError, ValueError):
        return {}


def parameters(ctx: RunContext) -> float:
    """The baseline's parameter count, from its safetensors headers (0 when it has none)."""
    return float(sum(count for _, count in models.tensor_sizes(ctx.files.folder)))


def expected(ctx: RunContext, config: QuantConfig) -> Peak:
    """The expected peak of measuring ``config`` in this run."""
    own = config.precision if isinstance(config, Precision) else getattr(config, "dtype", None)
    dtype = own or ctx.spec.model.dtype
    count = parameters(ctx)
    weights = count * _BYTES.get(dtype, 4)
    if not isinstance(config, Precision):  # a float copy is loaded, then quantized
        weights *= 2
    if ctx.baseline_model is not None:  # exact mode keeps the baseline beside it
        weights += count * _BYTES[ctx.spec.model.dtype]
    s = _shapes(ctx)
    hidden = s.get("hidden_size", 4096)
    context = ctx.windows.ids.shape[1]
    rows = ctx.spec.batch_size * context
    logits = min(rows * s.get("vocab_size", 32000) * 4, LOGITS_CAP_B)
    mlp = rows * s.get("intermediate_size", 4 * hidden) * 4 * 3
    attention = ctx.spec.batch_size * s.get("num_attention_heads", 32) * context**2 * 4
    return Peak(weights, logits + mlp + attention)


def available(device: str) -> float:
    """Bytes this process can still use: RAM not in use, or the GPU's free memory."""
    if device.startswith("cuda"):
        return float(torch.cuda.mem_get_info(torch.device(device))[0])
    return float(psutil.virtual_memory().available)


def check_memory(ctx: RunContext, config: QuantConfig) -> None:
    """Skip ``config`` (:class:`Unavailable`) when its expected peak exceeds what is available
    (placements with offload and served configs are not checked: memory is theirs to spread)."""
    model = ctx.spec.model
    gguf = config.BACKEND.endswith("backends.gguf:BACKEND")  # llama.cpp maps its own file
    offloaded = model.placement is not None and model.placement.device_map is not None
    if not ctx.spec.memory_check or config.engine or offloaded or gguf:
        return
    peak, free = expected(ctx, config), available(ctx.device)
    context = ctx.windows.ids.shape[1]
    if peak.total <= free:
        return
    where = "GPU memory free" if ctx.device.startswith("cuda") else "memory available"
    raise Unavailable(
        config.name,
        f"it needs about {peak.total / GB:.1f} GB while measured ({peak.weights / GB:.1f} GB of "
        f"weights as loaded, {peak.work / GB:.1f} GB for a batch of {ctx.spec.batch_size} "
        f"windows of {context} tokens, {peak.process / GB:.1f} GB for the process), "
        f"more than the {free / GB:.1f} GB of {where}; lower --batch-size or --context, free "
        "memory, or pass --no-memory-check to try anyway.",
    )
