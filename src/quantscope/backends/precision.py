"""Plain floating-point copies of the baseline: fp32, bf16, fp16 (no quantization library)."""

from __future__ import annotations

from typing import Any

from quantscope.backends import Backend, Emulation, LoadedModel
from quantscope.config import DType, Method, ModelSpec, QuantConfig
from quantscope.models import ModelFiles, torch_dtype

_DTYPE = {Method.FP32: DType.FP32, Method.BF16: DType.BF16, Method.FP16: DType.FP16}


class PrecisionBackend(Backend):
    name = "torch"
    methods = (Method.FP32, Method.BF16, Method.FP16)

    def available(self, method: Method, device: str) -> str | None:

        if method is Method.BF16 and device.startswith("cuda") and not _bf16_ok():
            return "this GPU has no bf16 support (needs compute capability 8.0+)."
        return None

    def load(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> LoadedModel:
        dtype = torch_dtype(_DTYPE[config.method])
        model, seconds = self.from_pretrained(files, spec, config, device, dtype=dtype)
        return LoadedModel(model, seconds, linear_weights(model), dict, "torch")

    def emulate(self, config: QuantConfig) -> Emulation:
        return rounding(_DTYPE[config.method])


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


def linear_weights(model: Any) -> dict[str, int]:
    """Every nn.Linear's logical weight count, by module name."""
    import torch

    return {
        name: module.in_features * module.out_features
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


BACKEND = PrecisionBackend()
