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
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class TaskItem:
    """One item: a context, its candidate continuations, and the index of the right one."""

    context: str
    choices: tuple[str, ...]
    answer: int = 0


class Task(ABC):
    """A named task; ``evaluate`` returns ``{metric: [correct per item]}``."""

    name: str = ""

    @abstractmethod
    def evaluate(self, model: Any, tokenizer: Any, batch_size: int) -> dict[str, list[bool]]:
        """Score every item with ``model``."""

    def describe(self, index: int) -> str:
        """A short text naming item ``index`` (for listing flipped items)."""
        return str(index)

    def fingerprint(self) -> str:
        """What identifies this task's items (the cache key of the baseline's answers)."""
        return self.name


_BUILTIN = {"cloze": "quantscope.tasks.items:ClozeTask"}
GROUP = "quantscope.tasks"  # entry points of other packages' tasks: name = "module:Class"


def registry() -> dict[str, str]:
    """Task name → ``"module:Class"``: the built-in tasks, then plug-ins' (entry points)."""
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    return {**found, **_BUILTIN}


def resolve(name: str, limit: int) -> Task:
    """The task called ``name`` (see the module docstring), keeping at most ``limit`` items.
    An unknown name is refused here, before any model loads, with the closest names."""
    from pathlib import Path

    known = registry()
    if name in known:
        module, attr = known[name].split(":")
        task: Task = getattr(importlib.import_module(module), attr)(limit)
        return task
    if name.endswith(".jsonl"):
        from quantscope.tasks.items import MultipleChoiceFile

        return MultipleChoiceFile(Path(name), limit)
    from quantscope.tasks.lmeval import LmEvalTask

    return LmEvalTask(name, limit, tuple(known))


def encode_pair(
    encode: Encode, context: str, continuation: str, prefix: int
) -> tuple[list[int], list[int]]:
    """Token ids of a context and its continuation, as lm-evaluation-harness splits them.

    Trailing spaces of the context move to the continuation; the pair is encoded whole and
    split where the context's own encoding ends; an empty context becomes ``[prefix]``.
    """
    if not context:
        return [prefix], encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    return whole[: len(ctx)], whole[len(ctx) :]
