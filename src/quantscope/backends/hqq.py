"""HQQ (Half-Quadratic Quantization): 8/4/3/2-bit weights in groups, calibration-free
(``hqq[bits=4,group=64]``).

Through the hqq package itself: each selected linear is replaced by hqq's ``HQQLinear``
(transformers 5's ``HqqConfig`` raises NotImplementedError), so ``include``/``skip`` select
layers exactly; ``lm_head`` is kept. ``group=0`` means one group per row. Weight
bytes count the packed weights and the per-group scales and zero points hqq keeps in each
layer's ``meta``. hqq is imported only here, inside functions.
"""

from __future__ import annotations

import time
from typing import Any

from quantscope.backends import Backend, LoadedModel, missing, package_version
from quantscope.config import Method, ModelSpec, QuantConfig
from quantscope.models import ModelFiles, torch_dtype


class HqqBackend(Backend):
    name = "hqq"
    methods = (Method.HQQ,)

    def available(self, method: Method, device: str) -> str | None:
        return missing("hqq", "hqq")

    def load(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> LoadedModel:
        import torch
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        model, seconds, linears, chosen = self.float_model(files, spec, config, device)
        dtype = torch_dtype(config.dtype or spec.dtype)
        quant = BaseQuantizeConfig(nbits=config.bits, group_size=config.group or None)
        start = time.perf_counter()
        for name in chosen:  # each chosen linear replaced by hqq's own layer
            parent, _, attr = name.rpartition(".")
            layer = HQQLinear(linears[name], quant, compute_dtype=dtype, device=device)
            setattr(model.get_submodule(parent), attr, layer)
        quantize_s = time.perf_counter() - start
        modules = {n: m for n, m in model.named_modules() if isinstance(m, HQQLinear)}
        quantized = {n: int(torch.Size(m.meta["shape"]).numel()) for n, m in modules.items()}

        def state() -> dict[str, list[Any]]:
            return {n: [m.W_q, *_meta_tensors(m.meta)] for n, m in modules.items()}

        library = f"hqq {package_version('hqq')}"
        return LoadedModel(model, seconds, quantized, state, library, quantize_s=quantize_s)


def _meta_tensors(meta: dict[str, Any]) -> list[Any]:
    """The tensors in an HQQ layer's meta (scale, zero, and their own meta when quantized)."""
    import torch

    found: list[Any] = []
    for value in meta.values():
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, dict):
            found.extend(_meta_tensors(value))
    return found


BACKEND = HqqBackend()
