"""Each config's per-token values, kept beside its result so that any two configs measured on
the same windows can be compared token by token (``quantscope compare RUN --pair A,B``).

Kept: the config's loss (NLL) and KL to the baseline, whether its top-1 token agrees, the
baseline's loss, and the window each token was scored in (the clusters of every se). Stored
compressed (``numpy.savez_compressed``, float32): about 12 bytes a token (see the README).

>>> import numpy as np
>>> tv = TokenValues(np.ones(3), np.zeros(3), np.full(3, 0.5), np.array([1, 0, 1], bool),
...                  np.array([0, 0, 1]))
>>> back = TokenValues.from_bytes(tv.to_bytes())
>>> back.agree.tolist(), float(back.kl.sum()), back.clusters.tolist()
([True, False, True], 1.5, [0, 0, 1])
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

FORMAT = 1


@dataclass(frozen=True)
class TokenValues:
    """Per-token values of one config, in scoring order (all (N,))."""

    nll: np.ndarray
    base_nll: np.ndarray
    kl: np.ndarray
    agree: np.ndarray
    clusters: np.ndarray

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            format=np.array([FORMAT]),
            nll=self.nll.astype(np.float32),
            base_nll=self.base_nll.astype(np.float32),
            kl=self.kl.astype(np.float32),
            agree=np.packbits(self.agree.astype(bool)),
            n=np.array([len(self.nll)]),
            clusters=_runs(self.clusters),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> TokenValues:
        with np.load(io.BytesIO(blob)) as z:
            n = int(z["n"][0])
            ids, counts = z["clusters"]
            return cls(
                z["nll"].astype(np.float64),
                z["base_nll"].astype(np.float64),
                z["kl"].astype(np.float64),
                np.unpackbits(z["agree"])[:n].astype(bool),
                np.repeat(ids, counts),
            )

    def same_tokens(self, other: TokenValues) -> bool:
        """True when both were scored on the same tokens (same windows, same baseline)."""
        return (
            len(self.nll) == len(other.nll)
            and np.array_equal(self.clusters, other.clusters)
            and np.array_equal(self.base_nll, other.base_nll)
        )


def _runs(clusters: np.ndarray) -> np.ndarray:
    """(2, R): the cluster id and length of each run of equal ids (windows are contiguous)."""
    c = np.asarray(clusters)
    if c.size == 0:
        return np.zeros((2, 0), np.int64)
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    return np.stack([c[starts], np.diff(np.r_[starts, c.size])]).astype(np.int64)
