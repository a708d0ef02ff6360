"""The built-in quantization configs: one frozen dataclass per method family.

Each class names the configs it is registered under (``VARIANTS``), the backend that runs it
(``BACKEND``, imported lazily) and its parameters with their rules (:func:`param`). Parsing,
validation, canonical names and the ``quantscope methods`` listing all read these fields.

>>> Bnb4(quant_type=Bnb4Type.NF4, double_quant=True, compute_dtype=DType.BF16).name
'bnb-nf4[compute_dtype=bf16,double_quant=true]'
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from quantscope.config.base import QuantConfig, WeightConfig
from quantscope.config.grammar import DType, param, variant

_GROUP_RULES: dict[str, Any] = {
    "low": 0,
    "step": 2,
    "message": "group must be an even number of weights, or 0 for one group per row; got {value}.",
}
_GROUP: dict[str, Any] = {"help": "weights sharing one scale (0: one per row)", **_GROUP_RULES}


@dataclass(frozen=True, kw_only=True)
class Precision(QuantConfig):
    """The baseline's weights cast to a floating-point format (``fp32``, ``bf16``, ``fp16``)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {d.value: {"precision": d} for d in DType}
    BACKEND: ClassVar[str] = "quantscope.backends.precision:BACKEND"
    ENGINES: ClassVar[tuple[str, ...]] = ("vllm",)
    precision: DType = variant()

    @property
    def quantizes(self) -> bool:
        return False


@dataclass(frozen=True, kw_only=True)
class BnbInt8(WeightConfig):
    """bitsandbytes LLM.int8 (``bnb-int8``)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {"bnb-int8": {}}
    BACKEND: ClassVar[str] = "quantscope.backends.bnb:BACKEND"
    threshold: float = param(
        6.0,
        help="outlier threshold",
        above=0,
        message="threshold must be positive (got {value}); LLM.int8 uses 6.0.",
    )


class Bnb4Type(str, Enum):
    NF4 = "nf4"
    FP4 = "fp4"


@dataclass(frozen=True, kw_only=True)
class Bnb4(WeightConfig):
    """bitsandbytes 4-bit NormalFloat or float (``bnb-nf4``, ``bnb-fp4``)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {
        f"bnb-{t.value}": {"quant_type": t} for t in Bnb4Type
    }
    BACKEND: ClassVar[str] = "quantscope.backends.bnb:BACKEND"
    quant_type: Bnb4Type = variant()
    double_quant: bool = param(False, help="quantize the block scales too")
    compute_dtype: DType = param(DType.FP32, help="precision of the matmul")


@dataclass(frozen=True, kw_only=True)
class Rtn(WeightConfig):
    """Round-to-nearest fake quantization in torch (``rtn``): the yardstick."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {"rtn": {}}
    BACKEND: ClassVar[str] = "quantscope.backends.rtn:BACKEND"
    bits: int = param(4, help="bits per weight", low=2, high=8)
    group: int = param(128, **_GROUP)
    sym: bool = param(True, help="scale only (true) or scale and zero point")


class QuantoWeights(str, Enum):
    INT8 = "int8"
    INT4 = "int4"
    INT2 = "int2"
    FP8 = "fp8"


@dataclass(frozen=True, kw_only=True)
class Quanto(WeightConfig):
    """optimum-quanto weights (``quanto-int8``, ``-int4``, ``-int2``, ``-fp8``)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {
        f"quanto-{w.value}": {"weights": w} for w in QuantoWeights
    }
    BACKEND: ClassVar[str] = "quantscope.backends.quanto:BACKEND"
    weights: QuantoWeights = variant()


@dataclass(frozen=True, kw_only=True)
class Hqq(WeightConfig):
    """HQQ, calibration-free, through the hqq package's own layers (``hqq``)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {"hqq": {}}
    BACKEND: ClassVar[str] = "quantscope.backends.hqq:BACKEND"
    bits: int = param(4, help="bits per weight", choices=(8, 4, 3, 2))
    group: int = param(128, **_GROUP)


class Int8Scheme(str, Enum):
    WEIGHT_ONLY = "wo"
    DYNAMIC = "dq"


@dataclass(frozen=True, kw_only=True)
class TorchAoInt8(WeightConfig):
    """torchao int8 weight-only (``torchao-int8wo``) or with int8 dynamic activations
    (``torchao-int8dq``)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {
        f"torchao-int8{s.value}": {"scheme": s} for s in Int8Scheme
    }
    BACKEND: ClassVar[str] = "quantscope.backends.torchao:BACKEND"
    scheme: Int8Scheme = variant()


@dataclass(frozen=True, kw_only=True)
class TorchAoInt4(WeightConfig):
    """torchao int4 weight-only, CUDA kernels (``torchao-int4wo``)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {"torchao-int4wo": {}}
    BACKEND: ClassVar[str] = "quantscope.backends.torchao:BACKEND"
    group: int = param(128, **_GROUP)


@dataclass(frozen=True, kw_only=True)
class TorchAoIntx(WeightConfig):
    """torchao intx weights at any bit width with a group size (``torchao-intx``)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {"torchao-intx": {}}
    BACKEND: ClassVar[str] = "quantscope.backends.torchao:BACKEND"
    bits: int = param(4, help="bits per weight", low=2, high=8)
    group: int = param(128, **_GROUP)


@dataclass(frozen=True, kw_only=True)
class Gguf(QuantConfig):
    """llama.cpp GGUF: the baseline quantized by llama.cpp, or a file you have (``gguf``)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {"gguf": {}}
    BACKEND: ClassVar[str] = "quantscope.backends.gguf:BACKEND"
    KV_ENGINE: ClassVar[str] = "gguf"
    qtype: str = param("Q8_0", help="llama.cpp quantization type", upper=True)
    file: str = param("", help="a GGUF file to evaluate instead", path=True)


GPTQ_BITS = (2, 3, 4, 8)  # the widths gptqmodel packs


@dataclass(frozen=True, kw_only=True)
class Calibrated(WeightConfig):
    """A config calibrated on text: ``samples`` sequences of ``seqlen`` tokens cut one after
    another from ``calib`` (a file) or else from the training part of the bundled text."""

    samples: int = param(64, help="calibration sequences", low=1)
    seqlen: int = param(256, help="tokens per calibration sequence", low=16)
    calib: str = param("", help="calibration text file", path=True, exists=True)


@dataclass(frozen=True, kw_only=True)
class Gptq(Calibrated):
    """GPTQ through gptqmodel, calibrated on training text (``gptq``)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {"gptq": {}}
    BACKEND: ClassVar[str] = "quantscope.backends.gptq:BACKEND"
    bits: int = param(
        4,
        help="bits per weight",
        choices=GPTQ_BITS,
        message="gptq packs 2, 3, 4 or 8 bits, not {value}.",
    )
    group: int = param(128, **_GROUP)
    sym: bool = param(True, help="symmetric quantization")
    act_order: bool = param(False, help="GPTQ's desc_act column order")


class LlmcScheme(str, Enum):
    W8A8 = "w8a8"
    W4A16 = "w4a16"
    AWQ = "awq"
    FP8 = "fp8"


@dataclass(frozen=True, kw_only=True)
class Llmc(Calibrated):
    """llm-compressor recipes, saved as compressed-tensors checkpoints (``llmc-w8a8``: INT8
    weights and dynamic per-token activations, SmoothQuant + GPTQ; ``llmc-w4a16``: GPTQ int4
    weights; ``llmc-awq``: AWQ asymmetric int4 weights; ``llmc-fp8``: FP8 channel-wise weights
    and dynamic per-token activations, no calibration)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {
        f"llmc-{s.value}": {"scheme": s} for s in LlmcScheme
    }
    BACKEND: ClassVar[str] = "quantscope.backends.llmc:BACKEND"
    ENGINES: ClassVar[tuple[str, ...]] = ("vllm",)
    scheme: LlmcScheme = variant()
    group: int = param(
        128, help="weights sharing one scale, w4a16 and awq (0: one per row)", **_GROUP_RULES
    )
    smoothing: float = param(0.8, help="SmoothQuant strength, w8a8", low=0, high=1)


@dataclass(frozen=True, kw_only=True)
class Checkpoint(QuantConfig):
    """A quantized checkpoint someone published or saved: a folder or a hub id whose
    config.json carries a quantization_config (``checkpoint[path=FOLDER]``, or the folder's
    path alone; ``checkpoint[path=org/name,revision=REV]`` for the hub)."""

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {"checkpoint": {}}
    BACKEND: ClassVar[str] = "quantscope.backends.checkpoint:BACKEND"
    ENGINES: ClassVar[tuple[str, ...]] = ("vllm",)
    path: str = param("", help="the checkpoint's folder or hub id")
    revision: str = param("", help="hub branch, tag or commit")
    dtype: DType | None = param(None, help="precision of what is held in float")

    def __post_init__(self) -> None:
        super().__post_init__()
        folder = Path(self.path).expanduser()
        if self.path and folder.is_dir():  # a local folder: its absolute path is its identity
            object.__setattr__(self, "path", str(folder.resolve()))
        if self.path and not self.label:  # tables name it by its folder or hub name
            at = f"@{self.revision[:12]}" if self.revision else ""
            object.__setattr__(self, "label", Path(self.path).name + at)

    @property
    def local(self) -> bool:
        """Whether ``path`` is a folder here (else a hub id)."""
        return Path(self.path).is_dir()


BUILTIN: tuple[type[QuantConfig], ...] = (
    Precision,
    BnbInt8,
    Bnb4,
    Rtn,
    Quanto,
    Hqq,
    TorchAoInt8,
    TorchAoInt4,
    TorchAoIntx,
    Gguf,
    Gptq,
    Llmc,
    Checkpoint,
)


def precision_config(dtype: DType) -> Precision:
    """The plain floating-point config of a dtype: how a baseline or a fallback is loaded.

    >>> precision_config(DType.BF16).name
    'bf16'
    """
    return Precision(precision=dtype)
