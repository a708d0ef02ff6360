"""torchao: int8 weight-only (``torchao-int8wo``), int8 dynamic activations with int8 weights
(``torchao-int8dq``), int4 weight-only (``torchao-int4wo[group=128]``, CUDA) and intx weights
at any bit width with a group size (``torchao-intx[bits=4,group=32]``).

Through ``torchao.quantization.quantize_`` on the selected linears. Weights become torchao
tensor subclasses; weight bytes count their inner tensors as held (the CPU intx layout keeps
each value in an int8, so its bytes are 8 bits per weight plus scales: what it really holds).
torchao is imported only here, inside functions.
"""

from __future__ import annotations

from typing import Any

from quantscope.backends import Backend, Quantized
from quantscope.config import Int8Scheme, QuantConfig, TorchAoInt4, TorchAoInt8, TorchAoIntx


class TorchaoBackend(Backend):
    name = "torchao"
    package = "torchao"
    module = "torchao"
    extra = "torchao"

    def available(self, config: QuantConfig, device: str) -> str | None:
        reason = super().available(config, device)
        if not reason and isinstance(config, TorchAoInt4) and not device.startswith("cuda"):
            return "torchao's int4 weight-only kernels need a CUDA GPU; on CPU use torchao-intx."
        return reason

    def quant_config(self, config: QuantConfig) -> Any:
        import torch
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
        )
        from torchao.quantization.granularity import PerAxis, PerGroup

        if isinstance(config, TorchAoInt8):
            dynamic = config.scheme is Int8Scheme.DYNAMIC
            return Int8DynamicActivationInt8WeightConfig() if dynamic else Int8WeightOnlyConfig()
        if isinstance(config, TorchAoInt4):
            return Int4WeightOnlyConfig(group_size=config.group or 128)
        assert isinstance(config, TorchAoIntx)
        granularity = PerGroup(config.group) if config.group else PerAxis(0)
        return IntxWeightOnlyConfig(
            weight_dtype=getattr(torch, f"int{config.bits}"), granularity=granularity
        )

    def quantize(
        self, model: Any, chosen: list[str], config: QuantConfig, device: str
    ) -> Quantized:
        from torchao.quantization import quantize_

        shapes = {n: model.get_submodule(n).weight.numel() for n in chosen}
        quantize_(model, self.quant_config(config), filter_fn=lambda _m, fqn: fqn in shapes)
        return Quantized(shapes)

    def library(self) -> str:
        import torchao

        return f"torchao {torchao.__version__}"


BACKEND = TorchaoBackend()
