"""What every task is: :class:`Task` (a name, and per metric one correctness value per item),
its items, and how lm-evaluation-harness splits a context from its continuation."""

from __future__ import annotations

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
