"""optimum-quanto: int8, int4 and int2 weights (``quanto-int8``, ``quanto-int4``,
``quanto-int2``), and float8 (e4m3) weights (``quanto-fp8``; stored in float8 everywhere,
multiplied in the model's precision, so it runs on CPU too).

The model is loaded in the baseline's precision, then ``quantize`` + ``freeze`` replace the
selected linears by quanto's ``QLinear`` (int4/int2 in groups of 128 along the input, as
quanto does). Weight bytes count the inner tensors of quanto's weight tensors (packed data,
scales, shifts). optimum-quanto is imported only here, inside functions.
"""

from __future__ import annotations

import time

from quantscope.backends import Backend, LoadedModel, missing, package_version
from quantscope.config import Method, ModelSpec, QuantConfig
from quantscope.models import ModelFiles

_QTYPE = {
    Method.QUANTO_INT8: "qint8",
    Method.QUANTO_INT4: "qint4",
    Method.QUANTO_INT2: "qint2",
    Method.QUANTO_FP8: "qfloat8",
}


class QuantoBackend(Backend):
    name = "optimum-quanto"
    methods = tuple(_QTYPE)

    def available(self, method: Method, device: str) -> str | None:
        return missing("optimum.quanto", "quanto")

    def load(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> LoadedModel:
        import optimum.quanto as quanto

        model, seconds, linears, selected = self.float_model(files, spec, config, device)
        chosen = set(selected)
        start = time.perf_counter()
        qtype = getattr(quanto, _QTYPE[config.method])
        quanto.quantize(model, weights=qtype, exclude=[n for n in linears if n not in chosen])
        quanto.freeze(model)
        quantize_s = time.perf_counter() - start
        modules = {n: m for n, m in model.named_modules() if isinstance(m, quanto.QLinear)}
        quantized = {n: m.in_features * m.out_features for n, m in modules.items()}
        library = f"optimum-quanto {package_version('optimum-quanto')}"
        return LoadedModel(model, seconds, quantized, dict, library, quantize_s=quantize_s)


BACKEND = QuantoBackend()
