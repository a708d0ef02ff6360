"""The baseline's reference pass as data: in memory, or on disk as compressed chunks.

The reference pass writes one chunk per batch of windows as it runs, and every comparison
pass reads the chunks back front to back, so memory stays flat in the length of the text.

Per scored token a reference keeps (see ``metrics.divergence`` for how the KL uses them):
the true token's log-prob; the baseline's top-k ids and log-probs; the log of its mass outside
the top k; m ids sampled from that outside ("tail") distribution and their log-probs.
With k = 256 and m = 64: (256 + 64)·(4 + 4) + 8 = 2,568 bytes per token before compression.

>>> shapes = [(), (2,), (2,), (), (1,), (1,)]
>>> ref = Reference(*(np.zeros((5, *s), dtype=np.float32) for s in shapes))
>>> cursor = ref.cursor()
>>> len(cursor.take(3)), len(cursor.take(2))
(3, 2)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from quantscope import chaos
from quantscope.cache import made, read_made

FORMAT = 6  # bump when the stored arrays change (6: top-1 is the first maximum among ties)


@dataclass
class Reference:
    """The baseline's pass over (part of) the windows, in scoring order.

    ``true_lp`` (N,) log p_base(true token); ``topk_lp`` / ``topk_ids`` (N, k) the baseline's k
    most likely tokens and their log-probs, sorted descending (so column 0 is its argmax);
    ``rest_lp`` (N,) the log of the baseline's mass outside its top k; ``tail_ids`` /
    ``tail_lp`` (N, m) tokens drawn from the baseline's distribution outside its top k, and
    their log-probs.
    """

    true_lp: np.ndarray
    topk_lp: np.ndarray
    topk_ids: np.ndarray
    rest_lp: np.ndarray
    tail_ids: np.ndarray
    tail_lp: np.ndarray

    def __len__(self) -> int:
        return len(self.true_lp)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def bytes_per_token(self) -> float:
        """Uncompressed bytes kept per scored token."""
        return sum(a.nbytes for a in self.arrays().values()) / max(1, len(self))

    def slice(self, start: int, stop: int) -> Reference:
        return Reference(*(a[start:stop] for a in self.arrays().values()))

    @staticmethod
    def concat(parts: list[Reference]) -> Reference:
        if len(parts) == 1:
            return parts[0]
        names = [f.name for f in fields(Reference)]
        return Reference(*(np.concatenate([getattr(p, n) for p in parts]) for n in names))

    def cursor(self) -> Cursor:
        return Cursor(iter([self]))

    def save(self, path: Path) -> None:
        """Write compressed to ``path`` (a .npz file), atomically."""
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **self.arrays())  # type: ignore[arg-type]
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Reference:
        with np.load(path, allow_pickle=False) as data:
            return cls(*(data[f.name] for f in fields(cls)))


class Cursor:
    """Reads a reference front to back, ``n`` tokens at a time, holding one chunk at most."""

    def __init__(self, chunks: Iterator[Reference]) -> None:
        self._chunks = chunks
        self._buffer: Reference | None = None

    def take(self, n: int) -> Reference:
        parts, need = [], n
        while need > 0:
            if self._buffer is None or len(self._buffer) == 0:
                try:
                    self._buffer = next(self._chunks)
                except StopIteration:
                    raise ValueError(f"reference ended {need} tokens early") from None
            part = self._buffer.slice(0, need)
            parts.append(part)
            self._buffer = self._buffer.slice(len(part), len(self._buffer))
            need -= len(part)
        return Reference.concat(parts)


class ReferenceCache:
    """A reference pass on disk: ``folder/chunk-000000.npz`` … plus ``done.json``.

    Written through :func:`quantscope.cache.made`, so it is made once under a lock, in a
    temporary folder renamed into place when complete: an interrupted pass never looks
    finished, and two runs sharing a cache never write into the same path.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def exists(self) -> bool:
        return read_made(self.folder) is not None

    def write(self, chunks: Iterable[Reference]) -> dict[str, float]:
        """Make the folder from ``chunks`` (each written as it comes), once; what it holds."""

        def make(tmp: Path) -> dict[str, float]:
            tmp.mkdir(parents=True)
            tokens = count = 0
            held = 0.0
            for count, chunk in enumerate(chunks, start=1):
                chunk.save(tmp / f"chunk-{count - 1:06d}.npz")
                chaos.point("reference-chunk")
                tokens += len(chunk)
                held += chunk.bytes_per_token * len(chunk)
            size = sum(p.stat().st_size for p in tmp.glob("chunk-*.npz"))
            info: dict[str, float] = {
                "format": FORMAT,
                "tokens": tokens,
                "chunks": count,
                "bytes_per_token": held / max(1, tokens),
            }
            info.update(disk_bytes=size, disk_bytes_per_token=size / max(1, tokens))
            (tmp / "done.json").write_text(json.dumps(info))
            return info

        return made(self.folder, make)

    def info(self) -> dict[str, float]:
        return dict(json.loads((self.folder / "done.json").read_text()))

    def chunks(self) -> Iterator[Reference]:
        for path in sorted(self.folder.glob("chunk-*.npz")):
            yield Reference.load(path)

    def cursor(self) -> Cursor:
        return Cursor(self.chunks())
