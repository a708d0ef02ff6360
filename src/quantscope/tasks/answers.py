"""Running a run's tasks on one model, and comparing its answers with the baseline's item by
item (accuracy, flips both ways, McNemar's p, the flipped items named)."""

from __future__ import annotations

from typing import Any

from quantscope.errors import UserError
from quantscope.metrics.tasks import compare_answers
from quantscope.tasks.base import Task

Answers = dict[str, dict[str, list[bool]]]  # task → metric → correct per item


def answer(
    tasks: list[Task], model: Any, tokenizer: Any, batch_size: int, errors: dict[str, str]
) -> Answers:
    """Every task's per-item correctness for ``model``. A task that cannot run (its data is
    out of reach, it generates text) is recorded in ``errors`` and left out; the config's
    other measurements go on."""
    answers = {}
    for task in tasks:
        if task.name in errors:
            continue
        try:
            answers[task.name] = task.evaluate(model, tokenizer, batch_size)
        except UserError as err:
            errors[task.name] = str(err)
    return answers


def compare(tasks: list[Task], base: Answers, answers: Answers) -> dict[str, dict[str, Any]]:
    """Per task and metric: accuracy, flips against the baseline, McNemar's p, flipped items."""
    out: dict[str, dict[str, Any]] = {}
    for task in tasks:
        if task.name not in answers or task.name not in base:
            continue
        for metric, values in answers[task.name].items():
            summary = compare_answers(base[task.name][metric], values)
            flipped = summary["c2w_items"] + summary["w2c_items"]  # type: ignore[operator]
            summary["flipped_examples"] = {str(i): task.describe(i) for i in flipped[:10]}
            out[f"{task.name}:{metric}"] = summary
    return out
