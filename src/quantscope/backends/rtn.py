"""Round-to-nearest (RTN) fake quantization in plain torch: the yardstick.

Each selected linear's weights are quantized group by group (``group`` weights of a row share
one scale; 0 means one group per row) to ``bits`` bits, symmetric (scale only) or asymmetric
(scale and zero point), and de-quantized back to float. The model then computes with exactly
those values on any device. Weight bytes count the packed format (``bits`` per weight plus a
float16 scale, and a ``bits``-bit zero point when asymmetric, per group), not the float
tensors it is held in; speed is the float model's.
"""

from __future__ import annotations

from typing import Any

from quantscope.backends import Backend, Emulation, Quantized
from quantscope.config import QuantConfig, Rtn
from quantscope.errors import UserError


def rtn(w: Any, bits: int, group: int, sym: bool) -> Any:
    """Round-to-nearest quantize-dequantize of a (out, in) weight, in groups along ``in``.

    >>> import torch
    >>> w = torch.tensor([[0.1, -0.6, 0.25, 1.0]])
    >>> rtn(w, bits=2, group=0, sym=True).tolist()  # levels: -2, -1, 0, 1 times 1.0
    [[0.0, -1.0, 0.0, 1.0]]
    >>> rtn(w, bits=8, group=2, sym=False).sub(w).abs().max().item() < 0.002
    True
    """
    import torch

    out_f, in_f = w.shape
    size = in_f if group <= 0 else group
    if in_f % size:
        raise UserError(
            f"group {group} does not divide a layer's {in_f} input features; pick a divisor "
            "or group=0 (one group per row)."
        )
    x = w.float().reshape(out_f, in_f // size, size)  # (out, groups, size)
    if sym:
        top = 2 ** (bits - 1) - 1
        scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / top
        q = torch.clamp(torch.round(x / scale), -top - 1, top)
        return (q * scale).reshape(out_f, in_f).to(w.dtype)
    top = 2**bits - 1
    low, high = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    scale = (high - low).clamp_min(1e-12) / top
    zero = torch.round(-low / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, top)
    return ((q - zero) * scale).reshape(out_f, in_f).to(w.dtype)


def packed_bytes(out_f: int, in_f: int, bits: int, group: int, sym: bool) -> int:
    """Bytes of the packed format: ``bits`` per weight, per group a float16 scale and (when
    asymmetric) a ``bits``-bit zero point, each rounded up to whole bytes.

    >>> packed_bytes(64, 128, bits=4, group=64, sym=True)  # 4096 + 128 groups × 2
    4352
    """
    size = in_f if group <= 0 else group
    groups = out_f * (in_f // size)
    zeros = 0 if sym else -(-groups * bits // 8)
    return -(-out_f * in_f * bits // 8) + 2 * groups + zeros


class RtnBackend(Backend):
    name = "torch (RTN)"

    def emulate(self, config: QuantConfig) -> Emulation:
        assert isinstance(config, Rtn)
        return Emulation(
            weight=lambda w: rtn(w, config.bits, config.group, config.sym),
            nbytes=lambda o, i: packed_bytes(o, i, config.bits, config.group, config.sym),
        )

    def quantize(
        self, model: Any, chosen: list[str], config: QuantConfig, device: str
    ) -> Quantized:
        import torch

        assert isinstance(config, Rtn)
        shapes, packed = {}, {}
        with torch.no_grad():
            for name in chosen:
                weight = model.get_submodule(name).weight  # (out, in)
                weight.copy_(rtn(weight.data, config.bits, config.group, config.sym))
                out_f, in_f = weight.shape
                shapes[name] = (out_f, in_f)
                packed[name] = packed_bytes(out_f, in_f, config.bits, config.group, config.sym)
        return Quantized({n: o * i for n, (o, i) in shapes.items()}, packed=packed)

    def library(self) -> str:
        import torch

        return f"torch {torch.__version__} (RTN, fake quantization)"


BACKEND = RtnBackend()
