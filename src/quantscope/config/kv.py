"""KV-cache configs: what the attention history is held in while a config scores text,
written after any weight config as ``CONFIG+kv=SPEC``.

Two families, one per engine: transformers' caches for torch configs — ``dynamic`` (the
unquantized cache) and its quantized cache (KIVI-style, arXiv:2402.02750: the newest
``residual`` tokens in full precision, the rest quantized in groups of ``group`` along
``axis``) with the quanto (2 or 4 bits) or HQQ (1, 2, 3, 4 or 8 bits) backend; and llama.cpp's
cache types for GGUF configs (``f16``, ``q8_0``, ``q4_0``, ...; ``v=`` gives V its own type).
``chunk`` is how many tokens are fed at a time, so every scored token attends to history the
cache already holds (quantized), as in decoding.

>>> spec = parse_kv("hqq-int2[residual=64]")
>>> spec.name, spec.bits, spec.engine
('hqq-int2[residual=64]', 2.0, 'torch')
>>> parse_kv(spec.name) == spec
True
>>> parse_kv("q8_0[v=q4_0]").type_v
'q4_0'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from quantscope.config.grammar import check_value, did_you_mean, format_value, param, parse_value
from quantscope.errors import UserError

QUANTO_BITS = (2, 4)  # what transformers' quanto cache packs
HQQ_BITS = (1, 2, 3, 4, 8)
# llama.cpp cache types and their bytes per 32 values (ggml's block sizes: a q8_0 block is
# 32 int8 and one fp16 scale, 34 bytes; q4_0 16 + 2; q4_1 and q5_1 add an fp16 minimum)
GGML_BYTES_PER_32 = {
    "f32": 128,
    "f16": 64,
    "bf16": 64,
    "q8_0": 34,
    "q5_1": 24,
    "q5_0": 22,
    "q4_1": 20,
    "q4_0": 18,
    "iq4_nl": 18,
}
TORCH_CACHES = (
    "dynamic",
    *(f"quanto-int{b}" for b in QUANTO_BITS),
    *(f"hqq-int{b}" for b in HQQ_BITS),
)
_RE = re.compile(r"^(?P<cache>[A-Za-z0-9_.-]+)(\[(?P<params>[^\]]*)\])?$")
_QUANTIZED_ONLY = ("residual", "group", "axis")


@dataclass(frozen=True, kw_only=True)
class KvSpec:
    """One KV-cache config. ``cache`` is its registered name; the parameters apply to the
    quantized torch caches (``residual``, ``group``, ``axis``), to llama.cpp's (``v``), or to
    every cache (``chunk``)."""

    cache: str
    chunk: int = param(128, help="tokens fed through the cache at a time", low=1)
    residual: int = param(128, help="newest tokens kept unquantized", low=0)
    group: int = param(64, help="values per quantization group", low=1)
    axis: int = param(0, help="quantization axis of keys and values", choices=(0, 1, -1))
    v: str = param("", help="llama.cpp type of V when it differs from K's")

    def __post_init__(self) -> None:
        for f in self.parameters():
            check_value(f"kv={self.cache}", f, getattr(self, f.name))
        if self.v and self.v not in GGML_BYTES_PER_32:
            raise UserError(
                f"v must be a llama.cpp cache type ({', '.join(GGML_BYTES_PER_32)}),"
                f" got '{self.v}'."
            )
        if self.engine == "gguf" and self.chunk != 128:
            raise UserError(
                f"kv={self.cache} takes no parameter 'chunk': llama.cpp writes every token into "
                "its cache before attending to it, so every token already reads the cache."
            )
        if self.engine == "torch" and self.v:
            raise UserError(f"kv={self.cache} takes no parameter 'v'; it is for llama.cpp caches.")
        if not self.quantized or self.engine == "gguf":
            given = [
                f.name
                for f in self.parameters()
                if f.name in _QUANTIZED_ONLY and getattr(self, f.name) != f.default
            ]
            if given:
                raise UserError(
                    f"kv={self.cache} takes no parameter '{given[0]}'; it applies to the "
                    "quantized transformers caches (quanto-*, hqq-*)."
                )
        if self.backend == "quanto" and self.axis not in (0, -1):
            raise UserError(f"axis must be 0 or -1 for kv={self.cache} (quanto), got {self.axis}.")
        if self.backend == "hqq" and self.axis not in (0, 1):
            raise UserError(f"axis must be 0 or 1 for kv={self.cache} (HQQ), got {self.axis}.")

    @classmethod
    def parameters(cls) -> list[Any]:
        return [f for f in fields(cls) if f.metadata.get("param")]

    @property
    def engine(self) -> str:
        """``torch`` (transformers' caches) or ``gguf`` (llama.cpp's cache types)."""
        return "gguf" if self.cache in GGML_BYTES_PER_32 else "torch"

    @property
    def backend(self) -> str:
        """transformers' quantized-cache backend (``quanto``, ``hqq``), else ''."""
        return self.cache.split("-")[0] if "-int" in self.cache else ""

    @property
    def bits(self) -> float:
        """Bits per cached value (K's for llama.cpp types, scales included there)."""
        if self.backend:
            return float(self.cache.rsplit("int", 1)[1])
        if self.engine == "gguf":
            return GGML_BYTES_PER_32[self.cache] / 4
        return 0.0  # dynamic: the model's own dtype, known only once loaded

    @property
    def type_v(self) -> str:
        return self.v or self.cache if self.engine == "gguf" else ""

    @property
    def quantized(self) -> bool:
        return bool(self.backend) or self.cache not in ("dynamic", "f32", "f16", "bf16")

    @property
    def name(self) -> str:
        """The canonical name: the cache plus every non-default parameter, sorted."""
        parts = [
            f"{f.name}={format_value(getattr(self, f.name))}"
            for f in sorted(self.parameters(), key=lambda f: f.name)
            if getattr(self, f.name) != f.default
        ]
        return self.cache + (f"[{','.join(parts)}]" if parts else "")

    def __str__(self) -> str:
        return self.name


def parse_kv(text: str) -> KvSpec:
    """A KV-cache config from its text: ``cache`` or ``cache[key=value,...]``."""
    match = _RE.match(text.strip())
    choices = [*TORCH_CACHES, *GGML_BYTES_PER_32]
    if not match or match.group("cache").lower() not in choices:
        word = match.group("cache") if match else text
        raise UserError(
            f"Unknown KV cache '{text}'.{did_you_mean(word.lower(), choices)} Caches: "
            f"{', '.join(TORCH_CACHES)} (torch configs); {', '.join(GGML_BYTES_PER_32)} (gguf)."
        )
    cache = match.group("cache").lower()
    params = {f.name: f for f in KvSpec.parameters()}
    values: dict[str, Any] = {"cache": cache}
    for item in filter(None, (match.group("params") or "").split(",")):
        key, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or key not in params:
            raise UserError(
                f"Cannot read '{item}' of kv={cache}; its parameters are "
                f"{', '.join(params)}, written key=value.{did_you_mean(key, list(params))}"
            )
        values[key] = parse_value(f"kv={cache}", params[key], KvSpec, raw)
    return KvSpec(**values)
