"""Quantization configs: methods and their parameters, which layers they quantize, and the
config grammar of the command line and of config files — parsed and validated once, at the edge.

>>> spec = parse_config("bnb-nf4[double_quant=true,compute_dtype=bf16]")
>>> spec.method.value, spec.double_quant, spec.compute_dtype.value
('bnb-nf4', True, 'bf16')
>>> spec.name
'bnb-nf4[compute_dtype=bf16,double_quant=true]'
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from pathlib import Path

from quantscope.errors import UserError


class DType(str, Enum):
    """Floating-point formats a baseline or a compute path can use."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Method(str, Enum):
    """Quantization methods; the backend registry maps each to the module that runs it."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    BNB_INT8 = "bnb-int8"
    BNB_NF4 = "bnb-nf4"
    BNB_FP4 = "bnb-fp4"
    RTN = "rtn"
    QUANTO_INT8 = "quanto-int8"
    QUANTO_INT4 = "quanto-int4"
    QUANTO_INT2 = "quanto-int2"
    QUANTO_FP8 = "quanto-fp8"
    HQQ = "hqq"
    TORCHAO_INT8WO = "torchao-int8wo"
    TORCHAO_INT8DQ = "torchao-int8dq"
    TORCHAO_INT4WO = "torchao-int4wo"
    TORCHAO_INTX = "torchao-intx"
    GGUF = "gguf"
    GPTQ = "gptq"


_BNB_4BIT = (Method.BNB_NF4, Method.BNB_FP4)
_REST = ("dtype", "include", "skip")  # what stays in float, and in which precision
PARAMS_OF: dict[Method, tuple[str, ...]] = {
    Method.FP32: (),
    Method.BF16: (),
    Method.FP16: (),
    Method.BNB_INT8: ("threshold", *_REST),
    Method.BNB_NF4: ("double_quant", "compute_dtype", *_REST),
    Method.BNB_FP4: ("double_quant", "compute_dtype", *_REST),
    Method.RTN: ("bits", "group", "sym", *_REST),
    Method.QUANTO_INT8: _REST,
    Method.QUANTO_INT4: _REST,
    Method.QUANTO_INT2: _REST,
    Method.QUANTO_FP8: _REST,
    Method.HQQ: ("bits", "group", *_REST),
    Method.TORCHAO_INT8WO: _REST,
    Method.TORCHAO_INT8DQ: _REST,
    Method.TORCHAO_INT4WO: ("group", *_REST),
    Method.TORCHAO_INTX: ("bits", "group", *_REST),
    Method.GGUF: ("qtype", "file"),
    Method.GPTQ: ("bits", "group", "sym", "act_order", "samples", "seqlen", "calib", *_REST),
}
GPTQ_BITS = (2, 3, 4, 8)  # the widths gptqmodel packs
CONFIG_FILE_FORMAT = 1
_ANY_METHOD = ("method", "lora", "label")  # fields every method takes


def precision_config(dtype: DType) -> QuantConfig:
    """The plain floating-point config of a dtype: how a baseline or a fallback is loaded.

    >>> precision_config(DType.BF16).name
    'bf16'
    """
    return QuantConfig(Method(dtype.value))


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean X?' suffix for the closest choice, or '' when nothing is close.

    >>> did_you_mean("bnb-nf5", ["bnb-nf4", "fp32"])
    " Did you mean 'bnb-nf4'?"
    """
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class QuantConfig:
    """One quantization config: a method and its validated parameters.

    Which linear layers are quantized is data: ``include`` (when given) and ``skip`` are
    module-name patterns, ``;``-separated on the command line (see :func:`select_modules`).
    ``dtype`` is the precision of everything not quantized (skipped linears, embeddings,
    norms); None keeps the baseline's. ``label`` is a display name (from a config file); it is
    not part of the config's identity, which is :attr:`name`. ``lora`` is a peft LoRA adapter
    folder applied on top (``bnb-nf4+lora=PATH``).

    >>> QuantConfig(Method.BNB_INT8, threshold=4.0).name
    'bnb-int8[threshold=4.0]'
    """

    method: Method
    threshold: float = 6.0
    bits: int = 4
    group: int = 128
    sym: bool = True
    act_order: bool = False
    double_quant: bool = False
    compute_dtype: DType = DType.FP32
    dtype: DType | None = None
    qtype: str = "Q8_0"
    file: str = ""
    samples: int = 64
    seqlen: int = 256
    calib: str = ""
    include: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()
    lora: str = ""
    label: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise UserError(
                f"threshold must be positive (got {self.threshold}); LLM.int8 uses 6.0."
            )
        if not 2 <= self.bits <= 8:
            raise UserError(f"bits must be between 2 and 8, got {self.bits}.")
        if self.method is Method.GPTQ and self.bits not in GPTQ_BITS:
            raise UserError(f"gptq packs 2, 3, 4 or 8 bits, not {self.bits}.")
        if self.samples < 1 or self.seqlen < 16:
            raise UserError(
                f"samples must be at least 1 and seqlen at least 16 tokens "
                f"(got samples={self.samples}, seqlen={self.seqlen})."
            )
        if self.group < 0 or (self.group and self.group % 2):
            raise UserError(
                f"group must be an even number of weights, or 0 for one group per row; "
                f"got {self.group}."
            )
        allowed = PARAMS_OF[self.method]
        for f in fields(self):
            if f.name in _ANY_METHOD or f.name in allowed:
                continue
            if getattr(self, f.name) != f.default:
                raise UserError(
                    f"'{self.method.value}' takes no parameter '{f.name}'; "
                    f"its parameters are: {', '.join(allowed) or 'none'}."
                )

    @property
    def name(self) -> str:
        """Canonical name: the method plus every non-default parameter, sorted."""
        parts = []
        for f in sorted(fields(self), key=lambda f: f.name):
            value = getattr(self, f.name)
            if f.name in _ANY_METHOD or value == f.default:
                continue
            parts.append(f"{f.name}={_format_value(value)}")
        lora = f"+lora={self.lora}" if self.lora else ""
        return self.method.value + (f"[{','.join(parts)}]" if parts else "") + lora

    @property
    def display(self) -> str:
        """What tables show: the label when there is one, else the canonical name."""
        return self.label or self.name

    @property
    def is_4bit(self) -> bool:
        return self.method in _BNB_4BIT


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return ";".join(value)
    return str(value)


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
    names: list[str], include: tuple[str, ...] = (), skip: tuple[str, ...] = ("lm_head",)
) -> list[str]:
    """The names (in order) to quantize: those matching any ``include`` pattern (all when
    none is given) and no ``skip`` pattern.

    >>> names = ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj",
    ...          "model.layers.1.mlp.down_proj", "lm_head"]
    >>> select_modules(names, skip=("lm_head", "down_proj"))
    ['model.layers.0.self_attn.q_proj']
    >>> select_modules(names, include=("model.layers.1",))
    ['model.layers.1.mlp.down_proj']
    """
    chosen = [n for n in names if not include or any(matches(n, p) for p in include)]
    return [n for n in chosen if not any(matches(n, p) for p in skip)]


def _parse_value(method: Method, key: str, raw: str) -> object:
    if key == "threshold":
        try:
            return float(raw)
        except ValueError:
            raise UserError(f"threshold must be a number, got '{raw}'.") from None
    if key in ("bits", "group", "samples", "seqlen"):
        try:
            return int(raw)
        except ValueError:
            raise UserError(f"{key} must be a whole number, got '{raw}'.") from None
    if key in ("double_quant", "sym", "act_order"):
        if raw.lower() not in ("true", "false", "1", "0"):
            raise UserError(f"{key} must be true or false, got '{raw}'.")
        return raw.lower() in ("true", "1")
    if key in ("compute_dtype", "dtype"):
        try:
            return DType(raw)
        except ValueError:
            raise UserError(
                f"{key} must be one of {', '.join(d.value for d in DType)}, got '{raw}'."
            ) from None
    if key in ("skip", "include"):
        return tuple(p for p in raw.split(";") if p)
    if key == "qtype":
        return raw.upper()
    if key in ("file", "calib"):
        path = Path(raw).expanduser().resolve()
        if key == "calib" and not path.is_file():
            raise UserError(f"No such calibration text file '{raw}'; pass calib=PATH to a file.")
        return str(path)
    allowed = PARAMS_OF[method]
    raise UserError(
        f"'{method.value}' has no parameter '{key}'.{did_you_mean(key, allowed)} "
        f"Its parameters are: {', '.join(allowed) or 'none'}."
    )


_CONFIG_RE = re.compile(r"^(?P<method>[A-Za-z0-9_.-]+)(\[(?P<params>[^\]]*)\])?$")


def parse_config(text: str) -> QuantConfig:
    """Parse ``method`` or ``method[key=value,...]`` into a validated :class:`QuantConfig`.

    >>> parse_config("bnb-int8[threshold=5,skip=lm_head;mlp.down_proj]").skip
    ('lm_head', 'mlp.down_proj')

    ``+lora=PATH`` applies a peft LoRA adapter folder on top of the config.
    """
    text, _, lora = text.strip().partition("+lora=")
    if lora:
        base, folder = parse_config(text), _adapter_folder(lora)
        return replace(base, lora=folder, label=f"{base.display}+lora={Path(folder).name}")
    match = _CONFIG_RE.match(text.strip())
    if not match:
        raise UserError(f"Cannot read config '{text}'; write it as name or name[key=value,...].")
    name = match.group("method").lower()
    try:
        method = Method(name)
    except ValueError:
        choices = [m.value for m in Method]
        raise UserError(
            f"Unknown config '{name}'.{did_you_mean(name, choices)} "
            "Run 'quantscope methods' to list them."
        ) from None
    values: dict[str, object] = {}
    for item in filter(None, (match.group("params") or "").split(",")):
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"Parameter '{item}' of '{name}' needs a value: write {item}=VALUE.")
        values[key.strip()] = _parse_value(method, key.strip(), raw.strip())
    return QuantConfig(method, **values)  # type: ignore[arg-type]


def _adapter_folder(text: str) -> str:
    """The absolute path of a LoRA adapter folder (one holding ``adapter_config.json``)."""
    folder = Path(text.strip()).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise UserError(
            f"'{text}' is not a LoRA adapter folder (no adapter_config.json); pass the folder "
            "'quantscope recover' or peft's save_pretrained wrote."
        )
    return str(folder.resolve())


def split_config_list(text: str) -> list[str]:
    """Split a comma list of configs, keeping commas inside brackets.

    >>> split_config_list("fp32,bnb-nf4[double_quant=true,compute_dtype=bf16],bf16")
    ['fp32', 'bnb-nf4[double_quant=true,compute_dtype=bf16]', 'bf16']
    """
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [i.strip() for i in items if i.strip()]


def read_config_file(path: str | Path) -> QuantConfig:
    """A config saved as a JSON file (``quantscope search`` writes them): its ``config`` is
    parsed as on the command line, its ``label`` names it in tables.

    >>> import json, tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "mix.json")
    ...     _ = open(path, "w").write(json.dumps({"format": 1, "label": "mix",
    ...                                           "config": "bnb-nf4[skip=down_proj]"}))
    ...     c = read_config_file(path)
    >>> c.display, c.skip
    ('mix', ('down_proj',))
    """
    import json

    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"No such config file '{path}'; 'quantscope search' writes them.")
    try:
        body = json.loads(file.read_text(encoding="utf-8"))
        text, label = body["config"], str(body.get("label") or file.stem)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(
            f"'{path}' is not a quantscope config file (JSON with a \"config\" string)."
        ) from None
    if body.get("format", CONFIG_FILE_FORMAT) != CONFIG_FILE_FORMAT:
        raise UserError(f"'{path}' has config file format {body.get('format')}; expected 1.")
    config = parse_config(str(text))
    return replace(config, label=label)


def parse_config_list(text: str) -> tuple[QuantConfig, ...]:
    """Parse ``--configs``: config names, or ``.json`` config files; duplicates are dropped,
    order kept."""
    configs: list[QuantConfig] = []
    for item in split_config_list(text):
        is_file = item.endswith(".json")
        config = read_config_file(item) if is_file else parse_config(item)
        if config not in configs:
            configs.append(config)
    if not configs:
        raise UserError("No configs given; pass --configs like fp32,bnb-nf4.")
    return tuple(configs)
