"""How often a verdict is wrong, measured on real per-token values: whole windows of a run are
drawn with replacement, the population is moved so that its truth sits exactly on the margin,
and each draw is judged as the product judges it. The share of false claims is the verdict's
type-I error; the share of draws whose printed interval holds the truth, its coverage.

Used by the test suite (``tests/test_harness.py``, on a stored run of the bundled model) and
by ``benchmarks/intervals.py``; thousands of draws are judged at once (numpy arrays).

>>> rng = np.random.default_rng(0)
>>> pool = Pool.of({"x": rng.exponential(size=4000)}, np.repeat(np.arange(40), 100))
>>> draw = pool.draw(16, 2000, np.random.default_rng(1))
>>> draw.values("x").shape
(2000,)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantscope.metrics import equivalence as eq
from quantscope.metrics import sequential as seq
from quantscope.metrics.stats import blocks, cluster_moments


@dataclass(frozen=True)
class Pool:
    """The population: per-window sums of each named per-token series (W, K) and the
    windows' token counts (W,)."""

    names: tuple[str, ...]
    sums: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, series: dict[str, np.ndarray], clusters: np.ndarray, even: bool = True) -> Pool:
        """Windows of ``clusters`` (evened out by ``blocks`` unless ``even`` is False, as
        quantscope did before it evened them) as the units drawn."""
        labels = blocks(clusters) if even else np.unique(clusters, return_inverse=True)[1]
        counts = np.bincount(labels).astype(np.float64)
        sums = np.stack([np.bincount(labels, weights=v) for v in series.values()], axis=-1)
        return cls(tuple(series), sums, counts)

    def mean(self, name: str) -> float:
        return float(self.sums[:, self.names.index(name)].sum() / self.counts.sum())

    def draw(self, windows: int, reps: int, rng: np.random.Generator) -> Draw:
        idx = rng.integers(0, len(self.counts), (reps, windows))
        return Draw(self, self.sums[idx], self.counts[idx])


@dataclass(frozen=True)
class Draw:
    """``reps`` samples of ``windows`` windows: sums (R, G, K), counts (R, G)."""

    pool: Pool
    sums: np.ndarray
    counts: np.ndarray

    def series(self, name: str, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
        """Window sums of ``scale · x + shift`` for series ``name`` (R, G)."""
        k = self.pool.names.index(name)
        return scale * self.sums[..., k] + shift * self.counts

    def values(self, name: str, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
        return self.estimate(self.series(name, scale, shift))[0]

    def estimate(self, sums: np.ndarray, upto: int | None = None) -> tuple[np.ndarray, ...]:
        """(value, se, clusters, skew, kurtosis), each (R,), of the first ``upto`` windows."""
        s, n = (sums, self.counts) if upto is None else (sums[:, :upto], self.counts[:, :upto])
        value, se, skew, kurtosis = cluster_moments(s, n)
        return value, se, np.full(value.shape, float(s.shape[-1])), skew, kurtosis


def p_value(est: Sequence[np.ndarray], bound: float, below: bool, method: str) -> np.ndarray:
    """One-sided p of each draw's estimate against ``bound``: ``corrected`` (the product's) or
    ``t`` (the plain t on windows − 1 df, as before)."""
    value, se, clusters, skew, kurtosis = est
    if method == "corrected":
        return eq.p_values(value, se, clusters, skew, kurtosis, bound, below)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (value - bound) / se
    below_p = eq.t_cdf(t, clusters - 1)  # the lazy scipy import the verdicts use
    return below_p if below else 1.0 - below_p


def interval(est: Sequence[np.ndarray], level: float, method: str) -> tuple[np.ndarray, ...]:
    """The two-sided ``level`` interval of each draw (low, high)."""
    value, se, clusters, skew, kurtosis = est
    tail = (1 + level) / 2
    if method == "corrected":
        low = eq.bounds(value, se, clusters, skew, kurtosis, tail, False)
        high = eq.bounds(value, se, clusters, skew, kurtosis, tail, True)
        return low, high
    q = eq.t_ppf(tail, clusters - 1)
    return value - q * se, value + q * se


def sequential_claims(
    draw: Draw,
    sums: np.ndarray,
    bound: float,
    below: bool,
    batch: int = 4,
    spending: str = seq.DEFAULT_SPENDING,
    alpha: float = eq.ALPHA,
) -> np.ndarray:
    """Whether each draw's one-sided test rejects at some look, looking after every ``batch``
    windows from ``seq.MIN_WINDOWS`` on, with the spending function's levels (R,)."""
    windows = sums.shape[-1]
    looks = [g for g in range(batch, windows + 1, batch) if g >= seq.MIN_WINDOWS]
    if not looks or looks[-1] != windows:
        looks.append(windows)
    claimed = np.zeros(sums.shape[0], dtype=bool)
    # information fractions differ a little between draws (windows of unequal size): the
    # levels of the typical draw, the windows' share of the text, are used for all
    times = [g / windows for g in looks]
    levels = seq.nominal_levels(times, alpha * seq.DESIGN_SHARE, spending)
    for g, level in zip(looks, levels, strict=True):
        est = draw.estimate(sums, upto=g)
        claimed |= p_value(est, bound, below, "corrected") < level
    return claimed


def rate(hits: np.ndarray) -> tuple[float, float]:
    """The share of true values and its Monte-Carlo standard error."""
    p = float(np.mean(hits))
    return p, float(np.sqrt(p * (1 - p) / hits.size))


def summary(rows: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    if not rows:
        return ""
    keys = list(rows[0])
    cells = [[str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = "  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line, *body])
