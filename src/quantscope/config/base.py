"""The base of every quantization config: a frozen dataclass whose fields declare their own
grammar (type, range, choices) in metadata, so a new method is a new class, not new branches.

A config class lists the names it is registered under in ``VARIANTS`` (name → the values of
its *variant* fields that name fixes, e.g. ``quanto-int4`` → ``weights=int4``) and where its
backend lives in ``BACKEND`` (``"module:attr"``, imported only when a config is loaded). Every
other field declared with :func:`param` is a parameter written in brackets.

>>> from quantscope.config.methods import Rtn
>>> c = Rtn(bits=3, sym=False)
>>> c.name, str(c) == c.name
('rtn[bits=3,sym=false]', True)
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar

from quantscope.config.grammar import DType, check_value, format_value, param, select_modules
from quantscope.config.kv import KvSpec


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """One quantization config: a method (the class and its variant fields) and its
    validated parameters. ``kv`` is the KV cache it scores through (``bf16+kv=quanto-int4``,
    see ``config.kv``); ``lora`` is a peft LoRA adapter folder applied on top
    (``bnb-nf4+lora=PATH``); ``label`` a display name (from a config file), not part of the
    config's identity, which is :attr:`name`. ``engine`` is a serving engine that measures it
    instead of transformers (``bf16+engine=vllm``): one of the class's ``ENGINES``.
    """

    VARIANTS: ClassVar[dict[str, dict[str, Any]]] = {}
    BACKEND: ClassVar[str] = ""
    KV_ENGINE: ClassVar[str] = "torch"  # which KV caches (``config.kv``) its engine takes
    ENGINES: ClassVar[tuple[str, ...]] = ()  # serving engines that load it (``+engine=``)

    kv: KvSpec | None = None
    lora: str = ""
    engine: str = ""
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for f in self.parameters():
            check_value(self.method, f, getattr(self, f.name))

    @classmethod
    def parameters(cls) -> list[Field[Any]]:
        """The bracket parameters: the class's own first, then those of the classes it builds
        on (calibration settings, then the ones every config shares)."""
        found = [f for f in fields(cls) if f.metadata.get("param")]

        def declared(f: Field[Any]) -> int:  # how far up the class hierarchy f is declared
            return next(
                i for i, k in enumerate(cls.__mro__) if f.name in vars(k).get("__annotations__", {})
            )

        return sorted(found, key=declared)

    @property
    def method(self) -> str:
        """The registered name this config's variant fields spell (``bnb-nf4``, ``rtn``)."""
        for name, fixed in self.VARIANTS.items():
            if all(getattr(self, k) == v for k, v in fixed.items()):
                return name
        raise ValueError(f"{type(self).__name__} has no registered name for {self!r}")

    @property
    def name(self) -> str:
        """Canonical name: the method plus every non-default parameter, sorted."""
        parts = [
            f"{f.name}={format_value(getattr(self, f.name))}"
            for f in sorted(self.parameters(), key=lambda f: f.name)
            if getattr(self, f.name) != f.default
        ]
        kv = f"+kv={self.kv.name}" if self.kv else ""
        lora = f"+lora={self.lora}" if self.lora else ""
        engine = f"+engine={self.engine}" if self.engine else ""
        return self.method + (f"[{','.join(parts)}]" if parts else "") + kv + lora + engine

    def __str__(self) -> str:
        return self.name

    @property
    def display(self) -> str:
        """What tables show: the label (and the engine) when there is one, else the canonical
        name."""
        if not self.label:
            return self.name
        return self.label + (f"+engine={self.engine}" if self.engine else "")

    @property
    def quantizes(self) -> bool:
        """Whether the config quantizes anything (plain precisions do not)."""
        return True

    def select(self, names: list[str]) -> list[str]:
        """The linear layers (of ``names``, in order) this config quantizes: every one but
        ``lm_head``, which is always kept (the one place this rule is written)."""
        return select_modules(names, (), ("lm_head",))


@dataclass(frozen=True, kw_only=True)
class WeightConfig(QuantConfig):
    """A config that quantizes a loaded model's linear layers: which ones is data.

    ``include`` (when given) and ``skip`` are module-name patterns (``;``-separated on the
    command line, see :func:`matches`); ``dtype`` is the precision of everything not
    quantized (skipped linears, embeddings, norms); None keeps the baseline's.
    """

    dtype: DType | None = param(None, help="precision of what is not quantized")
    include: tuple[str, ...] = param((), help="only these modules (patterns, ;-separated)")
    skip: tuple[str, ...] = param((), help="keep these modules in float (patterns)")

    def select(self, names: list[str]) -> list[str]:
        return select_modules(names, self.include, (*self.skip, "lm_head"))
