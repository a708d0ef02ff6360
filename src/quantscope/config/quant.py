"""The config grammar of the command line and of config files, parsed once, at the edge:
``method``, ``method[key=value,...]``, ``CONFIG+kv=SPEC``, ``CONFIG+lora=FOLDER``, comma lists,
JSON config files.

>>> spec = parse_config("bnb-nf4[double_quant=true,compute_dtype=bf16]")
>>> spec.method, spec.double_quant, spec.compute_dtype.value
('bnb-nf4', True, 'bf16')
>>> spec.name
'bnb-nf4[compute_dtype=bf16,double_quant=true]'
>>> parse_config(spec.name) == spec
True
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from quantscope.config.base import QuantConfig
from quantscope.config.grammar import did_you_mean, parse_value
from quantscope.config.kv import GGML_BYTES_PER_32, TORCH_CACHES, parse_kv
from quantscope.config.registry import ENGINE_BACKENDS, config_class
from quantscope.errors import UserError

CONFIG_FILE_FORMAT = 1
_CONFIG_RE = re.compile(r"^(?P<method>[A-Za-z0-9_.-]+)(\[(?P<params>[^\]]*)\])?$")


def parse_config(text: str) -> QuantConfig:
    """Parse ``method`` or ``method[key=value,...]`` into a validated config.

    >>> parse_config("bnb-int8[threshold=5,skip=lm_head;mlp.down_proj]").skip
    ('lm_head', 'mlp.down_proj')

    A path to a model folder (``./my-awq``, ``/models/x-W4A16``) is the quantized checkpoint
    in it (``checkpoint[path=...]``).

    ``+kv=SPEC`` scores it through a KV cache (``config.kv``), refused here when the config's
    engine cannot hold that cache; ``+lora=PATH`` applies a peft LoRA adapter folder on top;
    ``+engine=vllm`` measures it as vLLM serves it (the baseline's precisions, llm-compressor's
    configs and checkpoints).

    >>> parse_config("llmc-w4a16[group=64]+engine=vllm").name
    'llmc-w4a16[group=64]+engine=vllm'

    >>> parse_config("gguf[qtype=Q4_K_M]+kv=q8_0").name
    'gguf[qtype=Q4_K_M]+kv=q8_0'
    """
    text, _, engine = text.strip().partition("+engine=")
    if engine:
        return _served(parse_config(text), engine.strip().lower())
    text, _, lora = text.partition("+lora=")
    if lora:
        base, folder = parse_config(text), _adapter_folder(lora)
        return replace(base, lora=folder, label=f"{base.display}+lora={Path(folder).name}")
    text, _, kv_text = text.partition("+kv=")
    if kv_text:
        base, kv = parse_config(text), parse_kv(kv_text)
        if kv.engine != base.KV_ENGINE:
            takes = ", ".join(TORCH_CACHES if base.KV_ENGINE == "torch" else GGML_BYTES_PER_32)
            raise UserError(
                f"'{base.method}' cannot score through kv={kv.name}: its engine "
                f"takes the KV caches {takes}."
            )
        return replace(base, kv=kv)
    if _is_folder(text):  # a checkpoint folder given by its path
        return config_class("checkpoint")(path=text.strip())  # type: ignore[call-arg]
    match = _CONFIG_RE.match(text.strip())
    if not match:
        raise UserError(f"Cannot read config '{text}'; write it as name or name[key=value,...].")
    name = match.group("method").lower()
    cls = config_class(name)
    params = {f.name: f for f in cls.parameters()}
    values: dict[str, Any] = dict(cls.VARIANTS[name])
    for item in filter(None, (match.group("params") or "").split(",")):
        key, sep, raw = (part.strip() for part in item.partition("="))
        if not sep:
            raise UserError(f"Parameter '{item}' of '{name}' needs a value: write {item}=VALUE.")
        if key not in params:
            raise UserError(
                f"'{name}' takes no parameter '{key}'.{did_you_mean(key, list(params))} "
                f"Its parameters are: {', '.join(params) or 'none'}."
            )
        values[key] = parse_value(name, params[key], cls, raw)
    return cls(**values)


ENGINES = tuple(ENGINE_BACKENDS)


def _served(base: QuantConfig, engine: str) -> QuantConfig:
    """``base`` measured in a serving engine, or one sentence why it cannot be."""
    if engine not in ENGINES:
        raise UserError(
            f"Unknown engine '{engine}'.{did_you_mean(engine, ENGINES)} The serving engines "
            f"are: {', '.join(ENGINES)}."
        )
    if engine not in base.ENGINES:
        raise UserError(
            f"'{base.method}' cannot be measured in {engine}: it serves checkpoints, so "
            "+engine= takes fp32, bf16, fp16, the llmc-* configs and checkpoint folders."
        )
    if base.kv is not None or base.lora:
        raise UserError(
            f"'{base.display}' cannot be measured in {engine}: +engine= takes no +kv= or "
            "+lora= (the engine's own cache and adapters are not measured here)."
        )
    return replace(base, engine=engine)


def _is_folder(text: str) -> bool:
    """Whether a config text is a path to a model folder (one with a config.json)."""
    text = text.strip()
    looks = text.startswith((".", "/", "~")) or "/" in text or "\\" in text
    try:
        return looks and (Path(text).expanduser() / "config.json").is_file()
    except (RuntimeError, OSError):  # "~name" of no user, a name too long for the system
        return False


def _adapter_folder(text: str) -> str:
    """The absolute path of a LoRA adapter folder (one holding ``adapter_config.json``)."""
    try:
        folder = Path(text.strip()).expanduser()
        found = (folder / "adapter_config.json").is_file()
    except (RuntimeError, OSError):  # "~name" of no user, a name too long for the system
        found, folder = False, Path(text.strip())
    if not found:
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

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = os.path.join(d, "mix.json")
    ...     _ = open(path, "w").write(json.dumps({"format": 1, "label": "mix",
    ...                                           "config": "bnb-nf4[skip=down_proj]"}))
    ...     c = read_config_file(path)
    >>> c.display, c.skip
    ('mix', ('down_proj',))
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"No such config file '{path}'; 'quantscope search' writes them.")
    try:
        body = json.loads(file.read_text(encoding="utf-8"))
        text, label = body["config"], str(body.get("label") or file.stem)
    except (ValueError, KeyError, TypeError, AttributeError):  # UnicodeDecodeError too
        raise UserError(
            f"'{path}' is not a quantscope config file (JSON with a \"config\" string)."
        ) from None
    if body.get("format", CONFIG_FILE_FORMAT) != CONFIG_FILE_FORMAT:
        raise UserError(f"'{path}' has config file format {body.get('format')}; expected 1.")
    return replace(parse_config(str(text)), label=label)


ConfigsLike = str | QuantConfig | list[str | QuantConfig] | tuple[str | QuantConfig, ...]


def parse_config_list(configs: ConfigsLike) -> tuple[QuantConfig, ...]:
    """Configs from a comma list (``--configs``), a config object, or a list of names, config
    objects and ``.json`` config files; duplicates are dropped, order kept."""
    items = [configs] if isinstance(configs, (str, QuantConfig)) else list(configs)
    found: list[QuantConfig] = []
    for item in items:
        texts = split_config_list(item) if isinstance(item, str) else [item]
        for one in texts:
            if isinstance(one, QuantConfig):
                config = one
            else:
                config = read_config_file(one) if one.endswith(".json") else parse_config(one)
            if config not in found:
                found.append(config)
    if not found:
        raise UserError("No configs given; pass --configs like fp32,bnb-nf4.")
    return tuple(found)
