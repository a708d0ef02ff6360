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
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantscope.config import DataSpec
from quantscope.errors import UserError

BUNDLED_TEXT_NAME = "python-docs (pydoc_data.topics)"
_TRAIN_SHARE = 0.2  # share of the bundled text (in characters) kept for training


@dataclass(frozen=True)
class TextSource:
    """One evaluation text: a name for reports and the text itself."""

    name: str
    text: str


@dataclass(frozen=True)
class Windows:
    """Token windows: ``ids`` (W, C) int64; window w scores local positions ≥ ``score_from[w]``.

    ``source_of`` (W,) says which of ``sources`` each window was cut from.
    """

    ids: np.ndarray
    score_from: np.ndarray
    fingerprint: str
    sources: tuple[str, ...] = ("text",)
    source_of: np.ndarray | None = None
    order: np.ndarray | None = None  # each row's index in the text's own order (shuffled)

    @property
    def n_scored(self) -> int:
        return int((self.ids.shape[1] - self.score_from).sum())

    def shuffled(self, seed: int) -> Windows:
        """The same windows in a seeded random order (scored in that order by a run that
        stops when decided: any prefix is then a random sample of the text). Tokens keep
        their window's own index as cluster id, so values stay comparable with a run in the
        text's order; the fingerprint differs, so nothing measured in one order is taken for
        the other.

        >>> w = make_windows(list(range(40)), 8, 4)
        >>> s = w.shuffled(0)
        >>> sorted(s.order.tolist()) == list(range(len(w.ids))), s.fingerprint != w.fingerprint
        (True, True)
        """
        perm = np.random.default_rng(seed).permutation(len(self.ids))
        digest = hashlib.sha256(f"{self.fingerprint}|order={seed}".encode()).hexdigest()[:16]
        return Windows(
            self.ids[perm],
            self.score_from[perm],
            digest,
            self.sources,
            self.source_of[perm] if self.source_of is not None else None,
            perm if self.order is None else self.order[perm],
        )

    def head(self, count: int) -> Windows:
        """The first ``count`` windows (those a run that stopped early scored)."""
        return Windows(
            self.ids[:count],
            self.score_from[:count],
            self.fingerprint,
            self.sources,
            self.source_of[:count] if self.source_of is not None else None,
            self.order[:count] if self.order is not None else None,
        )

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(first_window_index, ids (B, C), score_from (B,))`` in order."""
        for start in range(0, len(self.ids), batch_size):
            stop = start + batch_size
            yield start, self.ids[start:stop], self.score_from[start:stop]

    def cluster_ids(self) -> np.ndarray:
        """Per scored token (in scoring order), the index of the window that scored it. (N,)"""
        counts = self.ids.shape[1] - self.score_from
        index = np.arange(len(counts)) if self.order is None else self.order
        return np.repeat(index, counts)

    def positions(self) -> np.ndarray:
        """Per scored token (in scoring order), its position within its window: how many
        tokens of context the model had when it predicted it. (N,)"""
        context = self.ids.shape[1]
        return np.concatenate([np.arange(start, context) for start in self.score_from.tolist()])

    def token_sources(self) -> np.ndarray:
        """Per scored token, the index of its source in ``sources``. (N,)"""
        of = self.source_of if self.source_of is not None else np.zeros(len(self.ids), np.int64)
        counts = self.ids.shape[1] - self.score_from
        return np.repeat(of, counts)


def bundled_text(part: str = "eval") -> str:
    """Python's own documentation text, split deterministically into ``eval`` and ``train``.

    Topics are taken in key order; each goes to training while training holds less than
    20% of the characters seen so far, so both parts sample the whole documentation. Many
    topics repeat paragraphs of others (the "if" topic is part of "compound"), so the training
    part drops every paragraph that also occurs in the evaluation part: no 80-character
    passage of the training text occurs in the evaluation text (checked in the tests).

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
    if part == "eval":
        return "\n\n".join(evaluation)
    shared = set(_paragraphs("\n\n".join(evaluation)))
    return "\n\n".join(p for p in _paragraphs("\n\n".join(train)) if p not in shared)


def _paragraphs(text: str) -> list[str]:
    """The text's paragraphs (split at blank lines), stripped, empty ones left out."""
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def read_sources(spec: DataSpec) -> list[TextSource]:
    """Every evaluation text of a run: the files, the dataset, or else the bundled text."""
    sources = [_read_file(Path(p).expanduser(), spec.field) for p in spec.texts]
    if spec.dataset:
        sources.append(_read_dataset(spec))
    return sources or [TextSource(BUNDLED_TEXT_NAME, bundled_text("eval"))]


def training_sources(spec: DataSpec) -> list[TextSource]:
    """Text for calibration or training, never evaluated on: ``spec.texts`` (files), or else
    the training part of the bundled text."""
    sources = [_read_file(Path(p).expanduser(), spec.field) for p in spec.texts]
    return sources or [TextSource(f"{BUNDLED_TEXT_NAME} [train]", bundled_text("train"))]


def _read_file(path: Path, field: str) -> TextSource:
    if not path.is_file():
        raise UserError(f"No such text file '{path}'; pass an existing file with --text.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"Text file '{path}' is not UTF-8; convert it first.") from None
    if path.suffix == ".jsonl":
        text = _jsonl_field(text, field, path)
    if not text.strip():
        raise UserError(f"Text file '{path}' is empty; pass a file with text in it.")
    return TextSource(str(path.resolve()), text)


def _jsonl_field(text: str, field: str, path: Path) -> str:
    """The ``field`` of every JSON Lines record, joined by blank lines."""
    parts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"Line {number} of '{path}' is not JSON; fix the file.") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise UserError(
                f"Line {number} of '{path}' has no text field '{field}'; pass --field NAME."
            )
        parts.append(record[field])
    return "\n\n".join(parts)


def _read_dataset(spec: DataSpec) -> TextSource:
    """A split of a Hugging Face dataset (hub id, local folder or data file), one field."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            "--dataset needs the 'datasets' package; pip install 'quantscope[datasets]'."
        ) from None
    assert spec.dataset is not None
    name, kwargs = spec.dataset, {}
    path = Path(name).expanduser()
    if path.is_file():  # a local data file: let datasets pick the builder from its suffix
        builder = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
        name, kwargs = builder.get(path.suffix, "text"), {"data_files": {spec.split: str(path)}}
    try:
        data = datasets.load_dataset(name, spec.dataset_config, split=spec.split, **kwargs)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as err:
        raise UserError(
            f"Cannot load dataset '{spec.dataset}' ({type(err).__name__}: {err})."
        ) from None
    if spec.field not in data.column_names:
        raise UserError(
            f"Dataset '{spec.dataset}' has no column '{spec.field}' (it has "
            f"{', '.join(data.column_names)}); pass --field NAME."
        )
    texts = [t for t in data[spec.field] if isinstance(t, str)]
    label = f"{spec.dataset}" + (f"/{spec.dataset_config}" if spec.dataset_config else "")
    return TextSource(f"{label}:{spec.split}:{spec.field}", "\n\n".join(texts))


def tokenize(
    source: TextSource,
    encode: Callable[[str], list[int]],
    spec: DataSpec,
    prefix: int | None = None,
) -> list[int]:
    """Token ids of a source, cut to ``spec.tokens + 1`` (the first token is context only).

    With ``prefix`` (a BOS token id) the ids start with it, so the text's own first token is
    scored too, conditioned on BOS, as lm-evaluation-harness does.

    >>> tokenize(TextSource("t", "5 6 7"), lambda s: [int(w) for w in s.split()],
    ...          DataSpec(tokens=3, context=3, stride=1), prefix=1)
    [1, 5, 6, 7]
    """
    ids = ([prefix] if prefix is not None else []) + encode(source.text)
    ids = ids[: spec.tokens + 1]
    if len(ids) < spec.context:
        raise UserError(
            f"The text '{source.name}' gives {len(ids)} tokens, fewer than one window of "
            f"--context {spec.context}; use a longer text or a smaller --context."
        )
    return ids


def build_windows(
    sources: list[TextSource],
    encode: Callable[[str], list[int]],
    spec: DataSpec,
    prefix: int | None = None,
) -> Windows:
    """Windows of every source (each windowed on its own), in source order."""
    parts = [
        make_windows(tokenize(s, encode, spec, prefix), spec.context, spec.stride) for s in sources
    ]
    if len(parts) == 1:
        return Windows(parts[0].ids, parts[0].score_from, parts[0].fingerprint, (sources[0].name,))
    digest = hashlib.sha256("".join(p.fingerprint for p in parts).encode()).hexdigest()[:16]
    return Windows(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.score_from for p in parts]),
        digest,
        tuple(s.name for s in sources),
        np.concatenate([np.full(len(p.ids), i) for i, p in enumerate(parts)]),
    )


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


def encoder(tokenizer: Any) -> Callable[[str], list[int]]:
    """A text's own token ids (no special tokens added) with ``tokenizer``."""

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    return encode


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS first by itself (Llama's do, SmolLM2's does not)."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def prefix_token(tokenizer: Any) -> int:
    """The token put before a text (``--bos``) or an empty task context: BOS, else EOS, as
    lm-evaluation-harness does."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise UserError(
            "This tokenizer has neither a BOS nor an EOS token, which --bos and tasks need."
        )
    return int(token)


def text_windows(sources: list[TextSource], tokenizer: Any, spec: DataSpec) -> tuple[Windows, bool]:
    """The windows of ``sources`` as a run, a study or a calibration takes them, and whether
    BOS was put first (``spec.bos``; by default as the tokenizer does by itself)."""
    bos = spec.bos if spec.bos is not None else adds_bos(tokenizer)
    prefix = prefix_token(tokenizer) if bos else None
    return build_windows(sources, encoder(tokenizer), spec, prefix), bos
