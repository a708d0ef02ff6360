"""The open registry of quantization configs: name → config class (which names its backend).

Built-in classes are listed in ``methods.BUILTIN``. Other packages add methods through the
entry-point group ``quantscope.backends`` (the way pytest and lm-evaluation-harness take
plug-ins): each entry point is named after a config name and points at its config class,
``sign = "quantscope_sign:Sign"``; the class names its backend in ``BACKEND``. A plug-in is
imported only when one of its names is used (or when every method is listed).

>>> config_class("bnb-nf4").__name__
'Bnb4'
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points

from quantscope.config.base import QuantConfig
from quantscope.config.grammar import did_you_mean
from quantscope.config.methods import BUILTIN
from quantscope.errors import UserError

GROUP = "quantscope.backends"


def _builtin() -> dict[str, type[QuantConfig]]:
    return {name: cls for cls in BUILTIN for name in cls.VARIANTS}


def _plugins() -> dict[str, EntryPoint]:
    """Entry points of installed plug-ins, by config name (read each time: cheap, and a
    package installed while Python runs is found)."""
    builtin = _builtin()
    return {ep.name: ep for ep in entry_points(group=GROUP) if ep.name not in builtin}


def names() -> list[str]:
    """Every registered config name: built-ins in their order, then plug-ins."""
    return [*_builtin(), *sorted(_plugins())]


def config_class(name: str) -> type[QuantConfig]:
    """The config class registered under ``name``; an unknown name says what is close."""
    found = _builtin().get(name)
    if found is not None:
        return found
    plugin = _plugins().get(name)
    if plugin is None:
        raise UserError(
            f"Unknown config '{name}'.{did_you_mean(name, names())} Available: "
            f"{', '.join(names())}; 'quantscope methods' lists their parameters."
        )
    try:
        cls = plugin.load()
    except Exception as err:  # a broken plug-in is its author's bug, said in one sentence
        raise UserError(
            f"The plug-in for '{name}' ({plugin.value}) failed to load: {err}"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, QuantConfig) and name in cls.VARIANTS):
        raise UserError(
            f"The plug-in entry point '{name}' ({plugin.value}) is not a quantscope config "
            f"class registering '{name}' in its VARIANTS."
        )
    return cls


# serving engines (``CONFIG+engine=NAME``): the backend that measures a config in them
ENGINE_BACKENDS = {"vllm": "quantscope.backends.vllm:BACKEND"}


def backend_of(config: QuantConfig) -> object:
    """The backend object that runs ``config`` (its module is imported now, its library not):
    the engine's for a served config."""
    where = ENGINE_BACKENDS[config.engine] if config.engine else type(config).BACKEND
    module, _, attr = where.partition(":")
    return getattr(importlib.import_module(module), attr)
