"""A sweep file: models × configs × texts × tasks × settings, in YAML, with the same names and
parameters as ``quantscope run``, expanded into one :class:`~quantscope.config.RunSpec` per
model and text.

>>> sweep = parse_sweep({"models": ["bundled", "org/name"], "configs": ["fp32", "bnb-nf4"],
...                      "texts": ["bundled"], "settings": {"tokens": 1024}})
>>> [(s.model.kind.value, len(s.configs), s.data.tokens) for s in sweep.runs()]
[('bundled', 2, 1024), ('hub', 2, 1024)]

The published quantized checkpoints of a model sit under it (``checkpoints``: folders, relative
to the file, or hub ids, ``@REVISION`` optional); they are measured in that model's run only,
against it:

>>> sweep = parse_sweep({"models": [{"model": "org/base", "checkpoints": ["org/base-AWQ@v2"]}],
...                      "configs": ["fp32"]})
>>> [c.display for c in sweep.runs()[0].configs]
['fp32', 'base-AWQ@v2']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quantscope.config import (
    Checkpoint,
    DataSpec,
    DType,
    ModelSpec,
    QuantConfig,
    RunSpec,
    did_you_mean,
    model_spec,
    parse_config_list,
    parse_margins,
)
from quantscope.errors import UserError

BUNDLED = "bundled"  # the bundled model, or the bundled text
_TOP = ("name", "models", "configs", "texts", "tasks", "settings", "store")
_DATA = ("tokens", "context", "stride", "bos", "field")
_RUN = (
    "batch_size",
    "seed",
    "device",
    "ref_topk",
    "ref_samples",
    "speed_reps",
    "max_new_tokens",
    "task_limit",
    "exact",
    "until_decided",  # margins, e.g. "ppl=1%,kl=0.02": stop each config once they are resolved
    "spending",
)


@dataclass(frozen=True)
class Sweep:
    """A parsed sweep: every model and text, the configs and tasks each is measured with, and
    the settings every run shares (``data`` for the windows, ``run`` for the rest)."""

    name: str
    models: tuple[ModelSpec, ...]
    configs: tuple[QuantConfig, ...]
    texts: tuple[str | None, ...] = (None,)  # None: the bundled text
    tasks: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    store: str | None = None
    checkpoints: tuple[tuple[QuantConfig, ...], ...] = ()  # per model: its published quants

    def runs(self) -> list[RunSpec]:
        """One run per model and text, in sweep order (model first)."""
        own = self.checkpoints or tuple(() for _ in self.models)
        return [
            RunSpec(
                model=model,
                configs=self.configs + extra,
                data=DataSpec(texts=(text,) if text else (), **self.data),
                tasks=self.tasks,
                store_path=self.store,
                **self.run,
            )
            for model, extra in zip(self.models, own, strict=True)
            for text in self.texts
        ]


def read_sweep(path: str | Path) -> Sweep:
    """The sweep in a YAML file (paths in it are relative to the file's folder)."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"No such sweep file '{path}'; write one in YAML (see the README).")
    try:
        body = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"Sweep file '{path}' is not UTF-8 text; write it in YAML.") from None
    except yaml.YAMLError as err:
        raise UserError(f"Sweep file '{path}' is not valid YAML: {err}") from None
    if not isinstance(body, dict):
        raise UserError(f"Sweep file '{path}' must be a YAML mapping with models and configs.")
    return parse_sweep(body, file.parent, body.get("name") or file.stem)


def parse_sweep(body: dict[str, Any], folder: Path | None = None, name: str = "sweep") -> Sweep:
    """A sweep from its mapping; every mistake is one sentence naming the key."""
    _known(body, _TOP, "sweep file")
    folder = folder or Path.cwd()
    entries = _list(body, "models", required=True)
    models = tuple(_model(m, folder) for m in entries)
    checkpoints = tuple(_checkpoints(m, folder) for m in entries)
    configs = parse_config_list([str(c) for c in _list(body, "configs", required=True)])
    texts = tuple(_text(t, folder) for t in _list(body, "texts")) or (None,)
    if len(set(texts)) != len(texts):
        raise UserError("The sweep names a text twice; list each text once.")
    settings = body.get("settings") or {}
    if not isinstance(settings, dict):
        raise UserError("'settings' must be a mapping like {tokens: 4096, context: 512}.")
    _known(settings, _DATA + _RUN, "settings")
    if "until_decided" in settings:  # the margins the runs stop at, as --margin spells them
        settings = {**settings, "until_decided": parse_margins(str(settings["until_decided"]))}
    store = body.get("store")
    sweep = Sweep(
        str(name),
        models,
        configs,
        texts,
        tuple(str(t) for t in _list(body, "tasks")),
        {k: v for k, v in settings.items() if k in _DATA},
        {k: v for k, v in settings.items() if k in _RUN},
        str((folder / store).resolve()) if store else None,
        checkpoints,
    )
    try:
        sweep.runs()  # every spec validates itself now, before anything loads
    except TypeError as err:
        raise UserError(f"A setting of the sweep has the wrong type: {err}.") from None
    return sweep


def _known(body: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in body:
        if key not in allowed:
            raise UserError(
                f"Unknown key '{key}' in the {where}.{did_you_mean(str(key), allowed)} "
                f"Keys: {', '.join(allowed)}."
            )


def _list(body: dict[str, Any], key: str, required: bool = False) -> list[Any]:
    value = body.get(key)
    if value is None and not required:
        return []
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, list) or (required and not value):
        raise UserError(f"'{key}' must be a list with at least one entry.")
    return value


def _model(entry: Any, folder: Path) -> ModelSpec:
    """``bundled``, a hub id, a path (relative to the sweep file), or a mapping with ``model``
    and any of ``revision``, ``dtype``, ``trust_remote_code``, ``allow_pickle``."""
    options = dict(entry) if isinstance(entry, dict) else {"model": entry}
    options.pop("checkpoints", None)  # read by _checkpoints
    _known(options, ("model", "revision", "dtype", "trust_remote_code", "allow_pickle"), "model")
    source = options.pop("model", None)
    if source in (None, BUNDLED):
        source = None
    elif not isinstance(source, str):
        raise UserError(f"A model must be a hub id, a path or 'bundled', got {source!r}.")
    elif (folder / source).exists() or source.startswith((".", "~")):
        source = str((folder / Path(source).expanduser()).resolve())
    if "dtype" in options:
        if str(options["dtype"]) not in {d.value for d in DType}:
            raise UserError(f"A model's dtype must be fp32, bf16 or fp16, got {options['dtype']}.")
        options["dtype"] = DType(str(options["dtype"]))
    return model_spec(source, **options)


def _checkpoints(entry: Any, folder: Path) -> tuple[QuantConfig, ...]:
    """A model's ``checkpoints``: folders (relative to the sweep file) or hub ids with an
    optional ``@REVISION``."""
    if not isinstance(entry, dict) or entry.get("checkpoints") is None:
        return ()
    found: list[QuantConfig] = []
    for item in _list(entry, "checkpoints"):
        if not isinstance(item, str) or not item.strip():
            raise UserError(f"A checkpoint must be a folder or a hub id, got {item!r}.")
        local = (folder / Path(item).expanduser()).resolve()
        if local.is_dir():
            found.append(Checkpoint(path=str(local)))
        else:
            hub, _, revision = item.partition("@")
            found.append(Checkpoint(path=hub.strip(), revision=revision.strip()))
    return tuple(found)


def _text(entry: Any, folder: Path) -> str | None:
    if entry in (None, BUNDLED):
        return None
    path = (folder / Path(str(entry)).expanduser()).resolve()
    if not path.is_file():
        raise UserError(f"No such text file '{entry}' in the sweep; give a path to a file.")
    return str(path)


def replace_store(sweep: Sweep, store: str | None) -> Sweep:
    """The sweep writing to ``store`` (the command line's ``--store`` wins over the file)."""
    return dataclasses.replace(sweep, store=store) if store else sweep
