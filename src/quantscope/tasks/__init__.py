"""Tasks scored by log-likelihood, compared item by item across configs.

A task is a plug-in behind :class:`Task`; :func:`resolve` finds it by name: ``cloze`` (the
built-in LAMBADA-style task from held-out bundled text), a ``.jsonl`` file of multiple-choice
items, a ``.yaml`` lm-evaluation-harness task file, or any lm-evaluation-harness task name.
Every task returns, per metric, one correctness value per item, in a fixed item order.

>>> resolve("cloze", limit=5).name
'cloze'
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path

from quantscope.tasks.base import Task, TaskItem, encode_pair
from quantscope.tasks.items import MultipleChoiceFile
from quantscope.tasks.lmeval import LmEvalTask

__all__ = ["GROUP", "Task", "TaskItem", "encode_pair", "registry", "resolve"]

_BUILTIN = {"cloze": "quantscope.tasks.items:ClozeTask"}
GROUP = "quantscope.tasks"  # entry points of other packages' tasks: name = "module:Class"


def registry() -> dict[str, str]:
    """Task name → ``"module:Class"``: the built-in tasks, then plug-ins' (entry points)."""
    found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    return {**found, **_BUILTIN}


def resolve(name: str, limit: int) -> Task:
    """The task called ``name`` (see the module docstring), keeping at most ``limit`` items.
    An unknown name is refused here, before any model loads, with the closest names."""
    known = registry()
    if name in known:
        module, attr = known[name].split(":")
        task: Task = getattr(importlib.import_module(module), attr)(limit)
        return task
    if name.endswith(".jsonl"):
        return MultipleChoiceFile(Path(name), limit)
    return LmEvalTask(name, limit, tuple(known))
