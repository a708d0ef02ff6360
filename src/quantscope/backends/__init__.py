"""Quantization backends: one template (:class:`Backend`), one module per library.

A config class names its backend (``BACKEND = "module:attr"``, see ``config.registry``); the
module imports its library only inside its functions, so importing quantscope never imports
bitsandbytes (or any other optional dependency). ``available()`` answers ``None`` when the
backend can run a config here, or one sentence saying why not; :meth:`Backend.check` raises
that sentence as :class:`~quantscope.errors.Unavailable`, the one way "cannot run here" is
said (the runner shows it as skipped, with its reason).

>>> from quantscope.config import parse_config
>>> get(parse_config("bnb-nf4")).name
'bitsandbytes'
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantscope.config import ModelSpec, QuantConfig, WeightConfig, backend_of
from quantscope.errors import Unavailable, UserError
from quantscope.models import ModelFiles, pretrained_kwargs, torch_dtype


@dataclass
class Quantized:
    """What a backend's quantize step made: per quantized linear its logical weight count
    (``quantized``, in × out), the quantization-state tensors that are neither parameters
    nor buffers (``state()``: bitsandbytes' absmax and codebooks, row scales; a function,
    because some kernels repack at the first forward pass, so it is read after inference),
    the bytes of a packed format when weights are held in float (``packed``, fake
    quantization), weight bytes read from a file (``footprint``, GGUF), the seconds a cached
    artifact took to make (``made_s``), and a note for the library string."""

    quantized: dict[str, int] = field(default_factory=dict)
    state: Callable[[], dict[str, list[Any]]] = dict
    packed: dict[str, int] = field(default_factory=dict)
    footprint: dict[str, float] | None = None
    made_s: float | None = None
    note: str = ""


@dataclass
class LoadedModel:
    """A model ready to evaluate, and what the backend knows about its quantized parts (see
    :class:`Quantized`). ``quantize_s`` is the part of the time spent quantizing, NaN when
    the library quantizes while loading."""

    model: Any
    load_s: float
    quantized: dict[str, int] = field(default_factory=dict)
    state: Callable[[], dict[str, list[Any]]] = dict
    library: str = ""
    packed: dict[str, int] = field(default_factory=dict)
    quantize_s: float = math.nan
    footprint: dict[str, float] | None = None
    kept: list[str] = field(default_factory=list)  # linears left unquantized (lm_head too)


class EngineModel:
    """What the passes ask of a model that runs in an engine rather than in torch (llama.cpp,
    vLLM): one empty parameter (the device is found from it), no buffers or modules, eval."""

    def __init__(self) -> None:
        import torch

        self.anchor = torch.nn.Parameter(torch.zeros(0))
        self.training = False

    def parameters(self) -> Any:
        yield self.anchor

    def buffers(self) -> Any:
        return iter(())

    def named_modules(self) -> Any:
        return iter(())

    def eval(self) -> EngineModel:
        return self


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


class Backend:
    """One quantization library. :meth:`load` is the template every backend follows: check
    it can run → load the model (:meth:`load_model`; by default the baseline in the config's
    ``dtype``) → quantize the linears the config selects (:meth:`quantize`, timed) →
    :class:`LoadedModel`. A backend overrides the steps it needs, and usually only
    :meth:`quantize`."""

    name: str = ""
    package: str = ""  # distribution whose version the results record
    module: str = ""  # what must import for the backend to run (the optional library)
    extra: str = ""  # the quantscope extra that installs it
    quantizes_while_loading = False  # then quantize s is not separable from load s (NaN)

    def available(self, config: QuantConfig, device: str) -> str | None:
        """None if ``config`` can run on ``device`` here, else one sentence why not."""
        reason = missing(self.module, self.extra) if self.module else None
        if reason is None and config.kv is not None and config.kv.backend:
            module = {"quanto": "optimum.quanto", "hqq": "hqq"}[config.kv.backend]
            reason = missing(module, config.kv.backend)
        return reason

    def check(self, config: QuantConfig, device: str) -> None:
        """Raise :class:`Unavailable` with the reason when ``config`` cannot run here."""
        reason = self.available(config, device)
        if reason:
            raise Unavailable(config.name, reason)

    def validate(self, files: ModelFiles, spec: ModelSpec, config: QuantConfig) -> None:
        """Raise a one-sentence :class:`UserError` when ``config`` cannot be measured against
        the baseline in ``files`` at all (a checkpoint of another model); called for every
        config before the run loads anything."""

    def folder(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> tuple[Path, dict[str, Any] | None]:
        """The checkpoint folder that holds ``config`` (what a serving engine loads), and
        what making it took when quantscope made it (None: found, not made)."""
        raise UserError(f"'{config.method}' has no checkpoint folder a serving engine can load.")

    def load(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> LoadedModel:
        """Load the baseline weights from ``files`` under ``config`` onto ``device``."""
        self.check(config, device)
        model, load_s = self.load_model(files, spec, config, device)
        names = [n for n, _ in linears(model)]
        chosen = config.select(names)
        start = time.perf_counter()
        made = self.quantize(model, chosen, config, device)
        quantize_s = time.perf_counter() - start
        if made.made_s is not None:
            quantize_s = made.made_s
        elif self.quantizes_while_loading:
            quantize_s = math.nan
        library = ", ".join(p for p in (self.library(), made.note) if p)
        kept = [n for n in names if n not in set(chosen)]
        return LoadedModel(
            model,
            load_s,
            made.quantized,
            made.state,
            library,
            made.packed,
            quantize_s,
            made.footprint,
            kept,
        )

    def load_model(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig, device: str
    ) -> tuple[Any, float]:
        """The model to quantize and the seconds loading took: by default the baseline in
        the config's ``dtype`` (else the baseline's), with :meth:`load_kwargs`."""

        dtype = config.dtype if isinstance(config, WeightConfig) else None
        extra = self.load_kwargs(files, spec, config)
        return from_pretrained(files, spec, device, dtype=torch_dtype(dtype or spec.dtype), **extra)

    def load_kwargs(
        self, files: ModelFiles, spec: ModelSpec, config: QuantConfig
    ) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments (a library that quantizes while loading)."""
        return {}

    def quantize(
        self, model: Any, chosen: list[str], config: QuantConfig, device: str
    ) -> Quantized:
        """Quantize the linears named in ``chosen`` of ``model`` in place."""
        return Quantized()

    def library(self) -> str:
        """The library and version the results record."""
        return f"{self.name} {package_version(self.package)}" if self.package else self.name

    def emulate(self, config: QuantConfig) -> Emulation | None:
        """The config's weight numerics in torch, or None when the backend cannot say."""
        return None


def from_pretrained(
    files: ModelFiles, spec: ModelSpec, device: str, **extra: Any
) -> tuple[Any, float]:
    """transformers' ``from_pretrained`` with the run's safety settings and ``extra``, timed;
    the model (in eval mode) and the seconds it took."""
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(files.folder), **extra, **pretrained_kwargs(spec, device)
        )
    except ValueError as err:  # accelerate's placement: nowhere to put some layers
        if "offload" not in str(err):
            raise
        raise UserError(
            f"{files.name} does not fit in --max-memory {spec.placement.memory()} and some "
            "layers have nowhere to go; pass --offload-dir DIR so they can wait on disk, or "
            "raise --max-memory."
        ) from None
    seconds = time.perf_counter() - start
    model.eval()
    return model, seconds


def linears(model: Any) -> list[tuple[str, Any]]:
    """Every ``nn.Linear`` of a model, by name, in model order."""
    import torch

    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


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


def get(config: QuantConfig) -> Backend:
    """The backend that runs ``config`` (its module is imported now, its library is not)."""
    backend = backend_of(config)
    if not isinstance(backend, Backend):
        raise TypeError(f"{type(config).BACKEND} is not a quantscope Backend")
    return backend
