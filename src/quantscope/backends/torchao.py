"""torchao: int8 weight-only (``torchao-int8wo``), int8 dynamic activations with int8 weights
(``torchao-int8dq``), int4 weight-only (``torchao-int4wo[group=128]``, CUDA) and intx weights
at any bit width with a group size (``torchao-intx[bits=4,group=32]``).

Through ``torchao.quantization.quantize_`` on the selected linears. Weights become torchao
tensor subclasses; weight bytes count their inner tensors as held (the CPU intx layout keeps
each value in an int8, so its bytes are 8 bits per weight plus scales: what it really holds).
torchao is imported only here, inside functions.
"""

from __future__ import annotations

import time
from typing import Any

from quantscope.backends import Backend, LoadedModel, missing
from quantscope.config import Method, ModelSpec, QuantConfig
from quantscope.models import ModelFiles


class TorchaoBackend(Backend):
    name = "torchao"
    methods = (
        Method.TORCHAO_INT8WO,
        Method.TORCHAO_INT8DQ,
        Method.TORCHAO_INT4WO,
        Method.TORCHAO_INTX,
    )

    def available(self, method: Method, device: str) -> str | None:
        reason = missing("torchao", "torchao")
        if reason:
            return reason
        if method is Method.TORCHAO_INT4WO and not device.startswith("cuda"):
            return "torchao's int4 weight-only kernels need a CUDA GPU; on CPU use torchao-intx."
        return None

    def quant_config(self, config: QuantConfig) -> Any:
        import torch
        from torchao.quantization import (
            Int4WeightOnlyConfig,
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            IntxWeightOnlyConfig,
        )
        from torchao.quantization.granularity import PerAxis, PerGroup

        if config.method is Method.TORCHAO_INT8WO:
            return Int8WeightOnlyConfig()
        if config.method is Method.TORCHAO_INT8DQ:
            return Int8DynamicActivationInt8WeightConfig()
        if config.method is Method.TORCHAO_INT4WO:
            return Int4WeightOnlyConfig(group_size=config.group or 128)
        granularity = PerGroup(config.group) if config.group else PerAxis(0)
        return IntxWeightOnlyConfig(
            weight_dtype=getattr(torch, f"int{config.bits}"), granularity=granularity
        )

    def load(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> LoadedModel:
        import torchao
        from torchao.quantization import quantize_

        model, seconds, linears, selected = self.float_model(files, spec, config, device)
        chosen = set(selected)
        start = time.perf_counter()
        quantize_(model, self.quant_config(config), filter_fn=lambda _m, fqn: fqn in chosen)
        quantize_s = time.perf_counter() - start
        quantized = {n: linears[n].in_features * linears[n].out_features for n in chosen}
        library = f"torchao {torchao.__version__}"
        return LoadedModel(model, seconds, quantized, dict, library, quantize_s=quantize_s)


BACKEND = TorchaoBackend()
