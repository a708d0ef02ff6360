"""1-bit sign quantization as a quantscope plug-in: W ≈ sign(W) · mean|W| per group."""

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from quantscope.backends import Backend, Quantized
from quantscope.config import WeightConfig, param


@dataclass(frozen=True, kw_only=True)
class Sign(WeightConfig):
    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {"sign": {}}
    BACKEND: ClassVar[str] = "quantscope_sign:BACKEND"
    group: int = param(64, help="weights sharing one scale", low=2, step=2)


class SignBackend(Backend):
    name = "sign (example plug-in)"

    def quantize(self, model: Any, chosen: list[str], config: Any, device: str) -> Quantized:
        done, packed = {}, {}
        with torch.no_grad():
            for name in chosen:
                w = model.get_submodule(name).weight  # (out, in)
                g = w.view(-1, config.group)  # (out·in/group, group)
                w.copy_((g.sign() * g.abs().mean(-1, keepdim=True)).view_as(w))
                done[name] = w.numel()
                packed[name] = w.numel() // 8 + 2 * g.shape[0]  # 1 bit + an fp16 scale a group
        return Quantized(done, packed=packed)


BACKEND = SignBackend()
