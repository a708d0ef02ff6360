"""Tasks made of explicit items: the built-in cloze task and multiple-choice JSONL files."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from quantscope.data import bundled_text, encoder, prefix_token
from quantscope.errors import UserError
from quantscope.evaluate import loglikelihoods
from quantscope.tasks.base import Task, TaskItem, encode_pair

_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]{3,})[.!?]?$", re.DOTALL)


class ItemTask(Task):
    """A task whose items are known up front, scored with :func:`evaluate.loglikelihoods`."""

    items: list[TaskItem]

    def evaluate(self, model: Any, tokenizer: Any, batch_size: int) -> dict[str, list[bool]]:
        encode = encoder(tokenizer)
        prefix = prefix_token(tokenizer)
        requests, owners = [], []
        for i, item in enumerate(self.items):
            for choice in item.choices:
                requests.append(encode_pair(encode, item.context, choice, prefix))
                owners.append(i)
        scores = loglikelihoods(model, requests, batch_size)
        return self.judge(scores, owners)

    def judge(self, scores: list[tuple[float, bool]], owners: list[int]) -> dict[str, list[bool]]:
        """Multiple choice: the highest summed log-likelihood (``acc``) and the highest per
        character of the choice (``acc_norm``, lm-evaluation-harness's normalisation)."""
        acc, acc_norm = [], []
        position = 0
        for item in self.items:
            lls = [scores[position + j][0] for j in range(len(item.choices))]
            position += len(item.choices)
            norm = [ll / max(1, len(c)) for ll, c in zip(lls, item.choices, strict=True)]
            acc.append(max(range(len(lls)), key=lls.__getitem__) == item.answer)
            acc_norm.append(max(range(len(norm)), key=norm.__getitem__) == item.answer)
        return {"acc": acc, "acc_norm": acc_norm}

    def describe(self, index: int) -> str:
        item = self.items[index]
        return f"…{item.context[-70:]} → {item.choices[item.answer].strip()}"

    def fingerprint(self) -> str:
        text = json.dumps([[i.context, list(i.choices), i.answer] for i in self.items])
        return f"{self.name}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


class ClozeTask(ItemTask):
    """Predict a passage's final word (LAMBADA-style), from the bundled *evaluation* text.

    Passages are the text's paragraphs of at least 40 words that end in a plain word of 3+
    letters; they are taken evenly spaced through the text, ``limit`` of them. An item is
    right when every token of " word" is the model's greedy choice (``acc``).
    """

    name = "cloze"

    def __init__(self, limit: int) -> None:

        candidates = []
        for paragraph in bundled_text("eval").split("\n\n"):
            flat = " ".join(paragraph.split())
            match = _WORD.match(flat)
            if match and len(flat.split()) >= 40 and "*" not in flat and ">>>" not in flat:
                candidates.append(TaskItem(match.group(1), (" " + match.group(2),), 0))
        step = max(1, len(candidates) // max(1, limit))
        self.items = candidates[::step][:limit]

    def judge(self, scores: list[tuple[float, bool]], owners: list[int]) -> dict[str, list[bool]]:
        return {"acc": [greedy for _, greedy in scores]}


class MultipleChoiceFile(ItemTask):
    """Items from a JSONL file: ``{"question": str, "choices": [str, ...], "answer": int}``.

    The context is ``"Question: {question}\\nAnswer:"`` and each choice is scored as
    ``" {choice}"``.
    """

    def __init__(self, path: Path, limit: int) -> None:
        if not path.is_file():
            raise UserError(f"No such task file '{path}'; pass an existing .jsonl file.")
        self.name = path.name
        self.items = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                self.items.append(_mc_item(line, number, path))
        if not self.items:
            raise UserError(f"Task file '{path}' has no items.")
        self.items = self.items[:limit]


def _mc_item(line: str, number: int, path: Path) -> TaskItem:
    where = f"line {number} of '{path}'"
    try:
        record = json.loads(line)
        question, choices, answer = record["question"], record["choices"], record["answer"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(
            f"{where} is not a JSON object with question, choices and answer; fix it."
        ) from None
    if not (
        isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) for c in choices)
    ):
        raise UserError(f"{where}: choices must be a list of at least two strings.")
    if not (isinstance(answer, int) and 0 <= answer < len(choices)):
        raise UserError(f"{where}: answer must be the index of one of the choices.")
    return TaskItem(f"Question: {question}\nAnswer:", tuple(" " + c for c in choices), answer)
