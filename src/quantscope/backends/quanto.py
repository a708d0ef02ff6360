"""optimum-quanto: int8, int4 and int2 weights (``quanto-int8``, ``quanto-int4``,
``quanto-int2``), and float8 (e4m3) weights (``quanto-fp8``; stored in float8 everywhere,
multiplied in the model's precision, so it runs on CPU too).

The model is loaded in the baseline's precision, then ``quantize`` + ``freeze`` replace the
selected linears by quanto's ``QLinear`` (int4/int2 in groups of 128 along the input, as
quanto does). Weight bytes count the inner tensors of quanto's weight tensors (packed data,
scales, shifts). optimum-quanto is imported only here, inside functions.
"""

from __future__ import annotations

from typing import Any

from quantscope.backends import Backend, Quantized, linears
from quantscope.config import QuantConfig, Quanto, QuantoWeights

_QTYPE = {
    QuantoWeights.INT8: "qint8",
    QuantoWeights.INT4: "qint4",
    QuantoWeights.INT2: "qint2",
    QuantoWeights.FP8: "qfloat8",
}


class QuantoBackend(Backend):
    name = "optimum-quanto"
    package = "optimum-quanto"
    module = "optimum.quanto"
    extra = "quanto"

    def quantize(
        self, model: Any, chosen: list[str], config: QuantConfig, device: str
    ) -> Quantized:
        import optimum.quanto as quanto

        assert isinstance(config, Quanto)
        keep = [n for n, _ in linears(model) if n not in set(chosen)]
        quanto.quantize(model, weights=getattr(quanto, _QTYPE[config.weights]), exclude=keep)
        quanto.freeze(model)
        modules = {n: m for n, m in model.named_modules() if isinstance(m, quanto.QLinear)}
        return Quantized({n: m.in_features * m.out_features for n, m in modules.items()})


BACKEND = QuantoBackend()
