"""Estimates with standard errors, from per-token values.

Tokens of one window share context, so they are not independent. Every standard error here
is therefore *cluster-robust*: with ``clusters`` (the window each token was scored in), the
variance of a mean is estimated from the per-cluster sums (the textbook ratio estimator),

    se² = G/(G−1) · Σ_g (S_g − n_g·x̄)² / n²,

where S_g and n_g are cluster g's sum and count, n = Σ n_g, G the number of clusters.
Without clusters every token is its own cluster and this is the usual s/√n (with n/(n−1)).

Windows of unequal size are evened out first (:func:`blocks`): the first window of a text
scores all its tokens and the last may score one, and a cluster of one token counted as a
whole degree of freedom makes every interval too narrow. The shape of the cluster residuals
(skewness, excess kurtosis) is kept with each estimate: the decisions correct for it
(``metrics.equivalence``).

>>> est = mean_se([1.0, 2.0, 3.0, 4.0])
>>> round(est.value, 3), round(est.se, 4)
(2.5, 0.6455)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ArrayLike = np.ndarray | Sequence[float]


@dataclass(frozen=True)
class Estimate:
    """A mean (or derived value), its standard error, ``n`` tokens in ``clusters`` groups, and
    the shape of the per-cluster residuals: ``skew`` (sample skewness, bias-adjusted) and
    ``kurtosis`` (excess, bias-adjusted, floored at 0); 0 when unknown."""

    value: float
    se: float
    n: int
    clusters: int
    skew: float = 0.0
    kurtosis: float = 0.0

    def scaled(self, factor: float, shift: float = 0.0) -> Estimate:
        """``factor · value + shift`` with its se (the shape flips sign with a negative factor).

        >>> Estimate(0.5, 0.1, 100, 10, skew=1.0).scaled(-2.0)
        Estimate(value=-1.0, se=0.2, n=100, clusters=10, skew=-1.0, kurtosis=0.0)
        """
        sign = 1.0 if factor >= 0 else -1.0
        return Estimate(
            factor * self.value + shift,
            abs(factor) * self.se,
            self.n,
            self.clusters,
            sign * self.skew,
            self.kurtosis,
        )


def blocks(clusters: ArrayLike) -> np.ndarray:
    """Cluster labels (N,) with near-equal sizes: a cluster under half the median size joins
    the one before it (the first, the one after), and one over 1.5 times the median is cut
    into contiguous parts of about the median. Tokens of one label stay together.

    >>> blocks([7] * 6 + [8] * 3 + [9] * 3 + [10]).tolist()
    [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    """
    c = np.asarray(clusters)
    if c.size == 0:
        return c.astype(np.int64)
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    sizes = np.diff(np.r_[starts, c.size])
    median = float(np.median(sizes))
    parts: list[int] = []  # sizes of the new blocks, in order
    for size in sizes.tolist():
        if parts and (size < 0.5 * median or parts[-1] < 0.5 * median):
            parts[-1] += size  # too small to stand alone, or joining one that is
        else:
            pieces = max(1, round(size / median)) if size > 1.5 * median else 1
            edges = np.linspace(0, size, pieces + 1).round().astype(int)
            parts.extend(np.diff(edges).tolist())
    return np.repeat(np.arange(len(parts)), parts)


def cluster_moments(sums: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, ...]:
    """The ratio estimator's mean, cluster-robust se, skewness and excess kurtosis (the last
    two bias-adjusted, the kurtosis floored at 0) from per-cluster ``sums`` and ``counts``
    (..., G): one estimate per leading index, so a simulation computes thousands at once.

    >>> [round(float(v), 4) for v in cluster_moments(np.array([2.0, 6.0]), np.array([2, 2]))]
    [2.0, 1.0, 0.0, 0.0]
    """
    sums = np.asarray(sums, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    g = sums.shape[-1]
    n = counts.sum(-1)
    mean = sums.sum(-1) / n
    resid = (sums - counts * mean[..., None]) / (n / g)[..., None]  # per-cluster, mean units
    m2 = (resid**2).mean(-1)
    se = np.sqrt(m2 / (g - 1)) if g > 1 else np.full_like(mean, np.nan)
    zero = np.zeros_like(mean)
    if g < 3:
        return mean, se, zero, zero
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = (resid**3).mean(-1) / m2**1.5 * math.sqrt(g * (g - 1)) / (g - 2)
        skew = np.where(m2 > 0, skew, 0.0)
        if g < 4:
            return mean, se, skew, zero
        excess = (resid**4).mean(-1) / m2**2 - 3.0
    kurtosis = ((g + 1) * excess + 6.0) * (g - 1) / ((g - 2) * (g - 3))
    return mean, se, skew, np.where(m2 > 0, np.maximum(kurtosis, 0.0), 0.0)


def cluster_sums(x: ArrayLike, clusters: ArrayLike | None = None) -> tuple[np.ndarray, ...]:
    """Per-cluster sums and counts of ``x`` (N,) over :func:`blocks` of ``clusters``."""
    values = np.asarray(x, dtype=np.float64)
    groups = np.arange(values.size) if clusters is None else blocks(clusters)
    _, inverse = np.unique(groups, return_inverse=True)
    return np.bincount(inverse, weights=values), np.bincount(inverse)


def mean_se(x: ArrayLike, clusters: ArrayLike | None = None) -> Estimate:
    """Mean of ``x`` (N,) with the cluster-robust standard error described in the module doc
    (clusters evened out by :func:`blocks`), and the residuals' shape.

    >>> round(mean_se([1.0, 1.0, 3.0, 3.0], clusters=[0, 0, 1, 1]).se, 6)
    1.0
    """
    values = np.asarray(x, dtype=np.float64)
    n = values.size
    if n == 0:
        return Estimate(math.nan, math.nan, 0, 0)
    sums, counts = cluster_sums(values, clusters)
    g = sums.size
    if g < 2:
        return Estimate(float(values.mean()), math.nan, n, g)
    mean, se, skew, kurtosis = (float(v) for v in cluster_moments(sums, counts))
    return Estimate(mean, se, n, g, skew, kurtosis)


def proportion(hits: ArrayLike, clusters: ArrayLike | None = None) -> Estimate:
    """Share of true values in ``hits`` (N,) with its (cluster-robust) standard error.

    >>> round(proportion([1, 0, 1, 1]).value, 2)
    0.75
    """
    return mean_se(np.asarray(hits, dtype=np.float64), clusters)


def paired_log_ratio(
    nll_q: ArrayLike, nll_base: ArrayLike, clusters: ArrayLike | None = None
) -> Estimate:
    """ln(PPL_q / PPL_base) = mean(nll_q − nll_base), with the paired difference's se.

    Because both models score the same tokens, their losses are strongly correlated and the
    paired se is far smaller than √(se_q² + se_base²).

    >>> round(paired_log_ratio([2.0, 3.0], [1.5, 2.7]).value, 3)
    0.4
    """
    diff = np.asarray(nll_q, dtype=np.float64) - np.asarray(nll_base, dtype=np.float64)
    return mean_se(diff, clusters)


def perplexity(nll: ArrayLike, clusters: ArrayLike | None = None) -> Estimate:
    """exp(mean nll) with the delta-method se: se(PPL) = PPL · se(mean nll).

    >>> round(perplexity([math.log(4.0)] * 3).value, 6)
    4.0
    """
    est = mean_se(nll, clusters)
    ppl = math.exp(est.value)
    return Estimate(ppl, ppl * est.se, est.n, est.clusters, est.skew, est.kurtosis)


def flips(losses: int, gains: int, n: int) -> Estimate:
    """Task accuracy lost over ``n`` independent items, in points, from the items that went
    from right to wrong (``losses``) and wrong to right (``gains``): each item's change is +1,
    −1 or 0. Half an item is added to each kind of flip (Agresti & Min, 2005, Stat. Med. 24(5),
    for paired proportions), so that a sample with no flips still has a spread: with the plain
    estimate, 50 items without a flip would "show" a difference of exactly 0.

    >>> e = flips(6, 2, 100)
    >>> round(e.value, 3), round(e.se, 3), e.n
    (3.922, 2.915, 100)
    """
    m = n + 2.0
    p_loss, p_gain = (losses + 0.5) / m, (gains + 0.5) / m
    mean = p_loss - p_gain
    var = p_loss + p_gain - mean**2
    central = [(1 - mean, p_loss), (-1 - mean, p_gain), (-mean, 1 - p_loss - p_gain)]
    m3 = sum(w * d**3 for d, w in central)
    m4 = sum(w * d**4 for d, w in central)
    skew = m3 / var**1.5 if var > 0 else 0.0
    kurtosis = max(m4 / var**2 - 3.0, 0.0) if var > 0 else 0.0
    return Estimate(100 * mean, 100 * math.sqrt(var / m), n, n, skew, kurtosis)


def estimate_of(metrics: dict[str, float], name: str) -> Estimate:
    """A stored result's estimate ``name`` ("kl" or "dppl_log") rebuilt from its metrics (its
    shape 0 when the result was measured before the shape was kept).

    >>> estimate_of({"kl_mean": 0.1, "kl_se": 0.01, "tokens": 256, "windows": 8}, "kl")
    Estimate(value=0.1, se=0.01, n=256, clusters=8, skew=0.0, kurtosis=0.0)
    """
    value = metrics["kl_mean"] if name == "kl" else metrics[name]
    se = metrics.get(f"{name}_se")
    return Estimate(
        value,
        se if se is not None else math.nan,
        int(metrics["tokens"]),
        int(metrics.get("clusters", metrics["windows"])),
        metrics.get(f"{name}_skew", 0.0),
        metrics.get(f"{name}_kurtosis", 0.0),
    )


def quantiles(x: ArrayLike, qs: Sequence[float] = (0.5, 0.9, 0.99)) -> list[float]:
    """Quantiles of ``x`` (linear interpolation, numpy's default).

    >>> quantiles([0.0, 1.0, 2.0, 3.0, 4.0], (0.5, 1.0))
    [2.0, 4.0]
    """
    values = np.asarray(x, dtype=np.float64)
    return [float(v) for v in np.quantile(values, list(qs))]


def median_spread(samples: ArrayLike) -> tuple[float, float, float]:
    """Median, min and max of repeated timings (the spread is min–max).

    >>> median_spread([3.0, 1.0, 2.0])
    (2.0, 1.0, 3.0)
    """
    values = np.asarray(samples, dtype=np.float64)
    return float(np.median(values)), float(values.min()), float(values.max())


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on both).

    >>> pareto([(1.0, 5.0), (2.0, 1.0), (3.0, 3.0), (1.0, 6.0)])
    [0, 1]
    """
    front = []
    for i, (x, y) in enumerate(points):
        beaten = any(
            (x2 <= x and y2 <= y) and (x2 < x or y2 < y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not beaten:
            front.append(i)
    return front
