"""The grammar every config field declares in its metadata: :func:`param` (default, range,
choices), :func:`variant`, typed parsing of a bracket value, the one-sentence check of a value,
and module-name patterns. Quantization configs (``base``) and KV-cache specs (``kv``) both build
on it.

>>> format_value(True), format_value(("a", "b")), format_value(DType.BF16), format_value(4.0)
('true', 'a;b', 'bf16', '4.0')
"""

from __future__ import annotations

import difflib
import fnmatch
import typing
from dataclasses import MISSING, Field, field
from enum import Enum
from pathlib import Path
from typing import Any

from quantscope.errors import UserError


class DType(str, Enum):
    """Floating-point formats a baseline or a compute path can use."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    def __repr__(self) -> str:  # as written in code (signatures in help and the API docs)
        return f"DType.{self.name}"


def param(
    default: Any = MISSING,
    *,
    help: str = "",
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    choices: tuple[Any, ...] = (),
    step: int | None = None,
    path: bool = False,
    exists: bool = False,
    upper: bool = False,
    message: str = "",
) -> Any:
    """A config parameter: its default and the rules its value must meet.

    ``low``/``high`` bound it (inclusive), ``above`` from below (exclusive), ``choices``
    lists the allowed values, ``step`` asks for a multiple (0 always allowed); ``path``
    values are made absolute (``exists``: the file must be there); ``upper`` upper-cases
    text. ``message`` replaces the generic sentence when a rule fails (``{value}`` in it
    becomes the value).
    """
    rules = {
        "help": help,
        "low": low,
        "high": high,
        "above": above,
        "choices": choices,
        "step": step,
        "path": path,
        "exists": exists,
        "upper": upper,
        "message": message,
    }
    return field(default=default, metadata={"param": True, **rules})


def variant(**options: Any) -> Any:
    """A field whose value the registered name fixes (``bnb-nf4`` → ``quant_type=nf4``)."""
    return field(metadata={"variant": True, **options})


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean X?' suffix for the closest choice, or '' when nothing is close.

    >>> did_you_mean("bnb-nf5", ["bnb-nf4", "fp32"])
    " Did you mean 'bnb-nf4'?"
    """
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def format_value(value: object) -> str:
    """A parameter value as the grammar writes it.

    >>> format_value(True), format_value(("a", "b")), format_value(DType.BF16), format_value(4.0)
    ('true', 'a;b', 'bf16', '4.0')
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return ";".join(value)
    return str(value)


def check_value(method: str, f: Field[Any], value: Any) -> None:
    """Raise a one-sentence UserError when ``value`` breaks a rule of parameter ``f``."""
    m = f.metadata
    if value is None or isinstance(value, (str, tuple, Enum)):
        return
    broken = ""
    if m["choices"] and value not in m["choices"]:
        broken = f"one of {', '.join(map(format_value, m['choices']))}"
    elif m["above"] is not None and not value > m["above"]:
        broken = "positive" if m["above"] == 0 else f"above {m['above']}"
    elif (m["low"] is not None and value < m["low"]) or (
        m["high"] is not None and value > m["high"]
    ):
        broken = _range(m["low"], m["high"])
    elif m["step"] and value % m["step"]:
        broken = f"a multiple of {m['step']} (or 0)"
    if broken:
        default = f"{f.name} must be {broken}, got {format_value(value)} ('{method}')."
        raise UserError(m["message"].format(value=value) if m["message"] else default)


def _range(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def parse_value(method: str, f: Field[Any], owner: type, raw: str) -> Any:
    """The typed value of parameter ``f`` from its text, by the field's type and metadata."""
    kind = typing.get_type_hints(owner)[f.name]
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args and typing.get_origin(kind) is not tuple else kind
    m = f.metadata
    if typing.get_origin(kind) is tuple:
        return tuple(p for p in raw.split(";") if p)
    if base is bool:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise UserError(f"{f.name} must be true or false, got '{raw}'.")
        return raw.lower() in ("true", "1")
    if isinstance(base, type) and issubclass(base, Enum):
        try:
            return base(raw)
        except ValueError:
            allowed = ", ".join(str(e.value) for e in base)
            raise UserError(f"{f.name} must be one of {allowed}, got '{raw}'.") from None
    if base in (int, float):
        try:
            return base(raw)
        except ValueError:
            what = "a whole number" if base is int else "a number"
            raise UserError(f"{f.name} must be {what}, got '{raw}'.") from None
    if m.get("path"):
        path = Path(raw).expanduser().resolve()
        if m.get("exists") and not path.is_file():
            raise UserError(f"No such file '{raw}' for {f.name}= of '{method}'; give a file path.")
        return str(path)
    return raw.upper() if m.get("upper") else raw


def matches(name: str, pattern: str) -> bool:
    """Whether a module name matches a pattern: a glob (``*``, ``?``, ``[...]``) over the whole
    dotted name, or plain dotted components at its start or end.

    >>> [matches("model.layers.1.mlp.down_proj", p) for p in
    ...  ("down_proj", "mlp.down_proj", "model.layers.1", "model.layers.1*", "layers.1", "proj")]
    [True, True, True, True, False, False]
    >>> matches("model.layers.11.mlp.up_proj", "model.layers.1")
    False
    """
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".") or name.endswith("." + pattern)


def select_modules(
    names: list[str], include: tuple[str, ...] = (), skip: tuple[str, ...] = ()
) -> list[str]:
    """The names (in order) matching any ``include`` pattern (all when none is given) and no
    ``skip`` pattern.

    >>> names = ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj",
    ...          "model.layers.1.mlp.down_proj", "lm_head"]
    >>> select_modules(names, skip=("lm_head", "down_proj"))
    ['model.layers.0.self_attn.q_proj']
    >>> select_modules(names, include=("model.layers.1",))
    ['model.layers.1.mlp.down_proj']
    """
    chosen = [n for n in names if not include or any(matches(n, p) for p in include)]
    return [n for n in chosen if not any(matches(n, p) for p in skip)]
