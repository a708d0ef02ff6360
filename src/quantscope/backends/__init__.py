"""Quantization backends behind one small interface, found through a lazy registry.

A backend module imports its library only inside its functions, so importing quantscope
never imports bitsandbytes (or any other optional dependency). ``available()`` answers
``None`` when the backend can run here, or one sentence saying why not.

>>> get(Method.BNB_NF4).name
'bitsandbytes'
"""

from __future__ import annotations

import importlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from quantscope.config import Method, ModelSpec, QuantConfig
from quantscope.models import ModelFiles


@dataclass
class LoadedModel:
    """A model ready to evaluate, and what the backend knows about its quantized parts.

    ``quantized`` maps each quantized linear module's name to its logical weight count
    (in_features × out_features); ``state()`` lists, per quantized module, the
    quantization-state tensors that are neither parameters nor buffers (bitsandbytes' absmax
    and codebooks, row scales), so that weight bytes are counted from the tensors actually
    held. It is a function because some kernels repack their state at the first forward pass
    (bitsandbytes on CPU turns float32 absmax into bfloat16), so it is read after inference.
    ``packed`` is for fake quantization (weights held in float): per quantized module, the
    bytes its packed format would hold, counted instead of the float tensor. ``quantize_s``
    is the part of the time spent quantizing, when the backend can tell it from loading.
    """

    model: Any
    load_s: float
    quantized: dict[str, int] = field(default_factory=dict)
    state: Callable[[], dict[str, list[Any]]] = dict
    library: str = ""
    packed: dict[str, int] = field(default_factory=dict)
    quantize_s: float = math.nan  # NaN: quantized while loading, not separable
    footprint: dict[str, float] | None = None  # weight bytes read from a file (GGUF)


@dataclass(frozen=True)
class Emulation:
    """A method's weight numerics in plain torch, for fast what-if passes on the baseline.

    ``weight(W)`` gives the weights (same shape and dtype) the method computes with;
    ``nbytes(out_features, in_features)`` the bytes it holds for such a linear's weight and
    quantization state. ``note`` says what the emulation leaves out (empty when nothing).
    """

    weight: Callable[[Any], Any]
    nbytes: Callable[[int, int], int]
    note: str = ""


class Backend(ABC):
    """One quantization library; each module in this package defines ``BACKEND``."""

    name: str = ""
    methods: tuple[Method, ...] = ()

    @abstractmethod
    def available(self, method: Method, device: str) -> str | None:
        """None if ``method`` can run on ``device`` here, else one sentence why not."""

    @abstractmethod
    def load(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> LoadedModel:
        """Load the baseline weights from ``files`` under ``config`` onto ``device``."""

    def emulate(self, config: QuantConfig) -> Emulation | None:
        """The config's weight numerics in torch, or None when the backend cannot say."""
        return None

    def from_pretrained(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str, **extra: Any
    ) -> tuple[Any, float]:
        """Check availability, then time transformers' ``from_pretrained`` with ``extra``.

        Returns the model (in eval mode) and the seconds the load took.
        """
        from transformers import AutoModelForCausalLM

        from quantscope.errors import UserError
        from quantscope.models import pretrained_kwargs

        reason = self.available(config.method, device)
        if reason:
            raise UserError(f"{config.name} cannot run here: {reason}")
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            str(files.folder), **extra, **pretrained_kwargs(spec, device)
        )
        seconds = time.perf_counter() - start
        model.eval()
        return model, seconds

    def float_model(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> tuple[Any, float, dict[str, Any], list[str]]:
        """The baseline in ``config.dtype`` (else the baseline's), the seconds it took, its
        linear layers by name, and the names ``config`` selects to quantize (``lm_head`` is
        kept): the start of every backend that quantizes a loaded float model."""
        import torch

        from quantscope.config import select_modules
        from quantscope.models import torch_dtype

        dtype = torch_dtype(config.dtype or spec.dtype)
        model, seconds = self.from_pretrained(files, spec, config, device, dtype=dtype)
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        chosen = select_modules(list(linears), config.include, (*config.skip, "lm_head"))
        return model, seconds, linears, chosen


def package_version(name: str) -> str:
    """The installed version of a distribution, for the ``library`` a result records."""
    from importlib.metadata import version

    return version(name)


def missing(module: str, extra: str) -> str | None:
    """None when ``module`` imports, else one sentence saying how to install it."""
    try:
        importlib.import_module(module)
    except ImportError as err:
        return f"{module} is not installed ({err}); pip install 'quantscope[{extra}]'."
    return None


_REGISTRY: dict[Method, str] = {
    Method.FP32: "quantscope.backends.precision:BACKEND",
    Method.BF16: "quantscope.backends.precision:BACKEND",
    Method.FP16: "quantscope.backends.precision:BACKEND",
    Method.BNB_INT8: "quantscope.backends.bnb:BACKEND",
    Method.BNB_NF4: "quantscope.backends.bnb:BACKEND",
    Method.BNB_FP4: "quantscope.backends.bnb:BACKEND",
    Method.RTN: "quantscope.backends.rtn:BACKEND",
    Method.QUANTO_INT8: "quantscope.backends.quanto:BACKEND",
    Method.QUANTO_INT4: "quantscope.backends.quanto:BACKEND",
    Method.QUANTO_INT2: "quantscope.backends.quanto:BACKEND",
    Method.QUANTO_FP8: "quantscope.backends.quanto:BACKEND",
    Method.HQQ: "quantscope.backends.hqq:BACKEND",
    Method.TORCHAO_INT8WO: "quantscope.backends.torchao:BACKEND",
    Method.TORCHAO_INT8DQ: "quantscope.backends.torchao:BACKEND",
    Method.TORCHAO_INT4WO: "quantscope.backends.torchao:BACKEND",
    Method.TORCHAO_INTX: "quantscope.backends.torchao:BACKEND",
    Method.GGUF: "quantscope.backends.gguf:BACKEND",
    Method.GPTQ: "quantscope.backends.gptq:BACKEND",
}


def get(method: Method) -> Backend:
    """The backend that runs ``method`` (its module is imported now, its library is not)."""
    module_name, attr = _REGISTRY[method].split(":")
    backend: Backend = getattr(importlib.import_module(module_name), attr)
    return backend


def all_methods() -> Iterator[tuple[Method, Backend]]:
    """Every registered method with its backend, in registry order."""
    for method in _REGISTRY:
        yield method, get(method)
