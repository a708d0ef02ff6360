"""HQQ (Half-Quadratic Quantization): 8/4/3/2-bit weights in groups, calibration-free
(``hqq[bits=4,group=64]``).

Through the hqq package itself: each selected linear is replaced by hqq's ``HQQLinear``
(transformers 5's ``HqqConfig`` raises NotImplementedError), so ``include``/``skip`` select
layers exactly; ``lm_head`` is kept. ``group=0`` means one group per row. Weight
bytes count the packed weights and the per-group scales and zero points hqq keeps in each
layer's ``meta``. hqq is imported only here, inside functions.
"""

from __future__ import annotations

from typing import Any

from quantscope.backends import Backend, Quantized
from quantscope.config import Hqq, QuantConfig


class HqqBackend(Backend):
    name = "hqq"
    package = "hqq"
    module = "hqq"
    extra = "hqq"

    def quantize(
        self, model: Any, chosen: list[str], config: QuantConfig, device: str
    ) -> Quantized:
        import torch
        from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

        assert isinstance(config, Hqq)
        quant = BaseQuantizeConfig(nbits=config.bits, group_size=config.group or None)
        modules = {}
        for name in chosen:  # each chosen linear replaced by hqq's own layer
            parent, _, attr = name.rpartition(".")
            linear = model.get_submodule(name)
            layer = HQQLinear(linear, quant, compute_dtype=linear.weight.dtype, device=device)
            setattr(model.get_submodule(parent), attr, layer)
            modules[name] = layer

        def state() -> dict[str, list[Any]]:
            return {n: [m.W_q, *_meta_tensors(m.meta)] for n, m in modules.items()}

        shapes = {n: int(torch.Size(m.meta["shape"]).numel()) for n, m in modules.items()}
        return Quantized(shapes, state)


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
