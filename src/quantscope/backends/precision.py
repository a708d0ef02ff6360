"""Plain floating-point copies of the baseline: fp32, bf16, fp16 (no quantization library)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantscope.backends import Backend, Emulation, Quantized, from_pretrained, linears
from quantscope.config import DType, ModelSpec, Precision, QuantConfig
from quantscope.models import ModelFiles, torch_dtype


class PrecisionBackend(Backend):
    name = "torch"
    quantizes_while_loading = True  # a cast: nothing is quantized apart from loading

    def available(self, config: QuantConfig, device: str) -> str | None:
        bf16 = isinstance(config, Precision) and config.precision is DType.BF16
        if bf16 and device.startswith("cuda") and not _bf16_ok():
            return "this GPU has no bf16 support (needs compute capability 8.0+)."
        return None

    def load_model(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> tuple[Any, float]:
        assert isinstance(config, Precision)
        return from_pretrained(files, spec, device, dtype=torch_dtype(config.precision))

    def folder(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> tuple[Path, dict[str, Any] | None]:
        """The baseline's own folder (an engine casts it to the precision as it loads)."""
        return files.folder, None

    def quantize(
        self, model: Any, chosen: list[str], config: QuantConfig, device: str
    ) -> Quantized:
        """Nothing to quantize: every linear (lm_head too) is counted, cast to the precision."""
        return Quantized({n: m.in_features * m.out_features for n, m in linears(model)})

    def emulate(self, config: QuantConfig) -> Emulation:
        assert isinstance(config, Precision)
        return rounding(config.precision)


def rounding(dtype: DType) -> Emulation:
    """Weights rounded to ``dtype`` and held in their own dtype (activations are not)."""
    import torch

    target = torch_dtype(dtype)
    size = torch.empty((), dtype=target).element_size()
    return Emulation(
        weight=lambda w: w.to(target).to(w.dtype),
        nbytes=lambda out_f, in_f: out_f * in_f * size,
        note="" if dtype is DType.FP32 else "weights rounded; activations stay in fp32",
    )


def _bf16_ok() -> bool:
    import torch

    return bool(torch.cuda.is_bf16_supported())


BACKEND = PrecisionBackend()
