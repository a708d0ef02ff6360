"""Text sources → deterministic token windows shared by every config of a run.

The window rule (also in the README): the first ``tokens + 1`` tokens of the text are kept
(token 0 is context only, so exactly ``tokens`` tokens are scored when the text is long
enough). Window ``w`` covers ``[w·stride, w·stride + context)``; while a full window fits it
is used as is, and one last window ``[N − context, N)`` covers the tail. Each window scores
the positions not scored by the window before it, so every token from position 1 on is
scored exactly once, and every scored token outside the first window sees at least
``context − stride`` tokens before it (so ``stride < context``; ``stride = context − 1`` gives
back-to-back windows like lm-evaluation-harness's rolling windows).

>>> w = make_windows(list(range(11)), context=4, stride=2)
>>> w.ids.tolist()
[[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9], [7, 8, 9, 10]]
>>> w.score_from.tolist()
[1, 2, 2, 2, 3]
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantscope.config import DataSpec
from quantscope.errors import UserError

BUNDLED_TEXT_NAME = "python-docs (pydoc_data.topics)"
_TRAIN_SHARE = 0.2  # share of the bundled text (in characters) kept for training


@dataclass(frozen=True)
class Windows:
    """Token windows: ``ids`` (W, C) int64; window w scores local positions ≥ ``score_from[w]``."""

    ids: np.ndarray
    score_from: np.ndarray
    fingerprint: str

    @property
    def n_scored(self) -> int:
        return int((self.ids.shape[1] - self.score_from).sum())

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(first_window_index, ids (B, C), score_from (B,))`` in order."""
        for start in range(0, len(self.ids), batch_size):
            stop = start + batch_size
            yield start, self.ids[start:stop], self.score_from[start:stop]

    def cluster_ids(self) -> np.ndarray:
        """Per scored token (in scoring order), the index of the window that scored it. (N,)"""
        counts = self.ids.shape[1] - self.score_from
        return np.repeat(np.arange(len(counts)), counts)


def bundled_text(part: str = "eval") -> str:
    """Python's own documentation text, split deterministically into ``eval`` and ``train``.

    Topics are taken in key order; each goes to training while training holds less than
    20% of the characters seen so far, so both parts sample the whole documentation.

    >>> 0.15 < len(bundled_text("train")) / len(bundled_text("eval")) < 0.35
    True
    """
    from pydoc_data.topics import topics

    if part not in ("eval", "train"):
        raise ValueError(part)
    train, evaluation, seen, kept = [], [], 0, 0
    for key in sorted(topics):  # a topic goes to training while training is under its share
        body = topics[key].strip()
        seen += len(body)
        if kept < _TRAIN_SHARE * seen:
            train.append(body)
            kept += len(body)
        else:
            evaluation.append(body)
    return "\n\n".join(train if part == "train" else evaluation)


def read_text(spec: DataSpec) -> tuple[str, str]:
    """The evaluation text and a name for it: the file given, or the bundled text."""
    if spec.text_path is None:
        return bundled_text("eval"), BUNDLED_TEXT_NAME
    path = Path(spec.text_path).expanduser()
    if not path.is_file():
        raise UserError(f"No such text file '{spec.text_path}'; pass an existing file with --text.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"Text file '{spec.text_path}' is not UTF-8; convert it first.") from None
    if not text.strip():
        raise UserError(f"Text file '{spec.text_path}' is empty; pass a file with text in it.")
    return text, str(path.resolve())


def tokenize(text: str, encode: Callable[[str], list[int]], spec: DataSpec) -> list[int]:
    """Token ids of ``text``, cut to ``spec.tokens + 1`` (the first token is context only)."""
    ids = encode(text)[: spec.tokens + 1]
    if len(ids) < spec.context:
        raise UserError(
            f"The text gives {len(ids)} tokens, fewer than one window of --context "
            f"{spec.context}; use a longer text or a smaller --context."
        )
    return ids


def make_windows(ids: list[int], context: int, stride: int) -> Windows:
    """Split ``ids`` into windows by the rule in this module's docstring."""
    n = len(ids)
    if not 1 <= stride < context:
        raise UserError(f"--stride must be at least 1 and below --context, got {stride}.")
    if n < context:
        raise UserError(f"{n} tokens are fewer than one window of {context}; lower --context.")
    starts = list(range(0, n - context + 1, stride))
    if starts[-1] + context < n:
        starts.append(n - context)
    score_from, prev_end = [], 0
    for start in starts:
        score_from.append(max(1, prev_end - start))
        prev_end = start + context
    arr = np.asarray(ids, dtype=np.int64)
    windows = np.stack([arr[s : s + context] for s in starts])  # (W, C)
    digest = hashlib.sha256(arr.astype(np.int32).tobytes())
    digest.update(f"context={context},stride={stride}".encode())
    return Windows(windows, np.asarray(score_from, dtype=np.int64), digest.hexdigest()[:16])


def scored_targets(windows: Windows) -> np.ndarray:
    """The true next tokens in scoring order, (N,): what every metric is scored against."""
    parts = [row[start:] for row, start in zip(windows.ids, windows.score_from, strict=True)]
    return np.concatenate(parts)
