"""Estimates with standard errors, from per-token values.

Tokens of one window share context, so they are not independent. Every standard error here
is therefore *cluster-robust*: with ``clusters`` (the window each token was scored in), the
variance of a mean is estimated from the per-cluster sums (the textbook ratio estimator),

    se² = G/(G−1) · Σ_g (S_g − n_g·x̄)² / n²,

where S_g and n_g are cluster g's sum and count, n = Σ n_g, G the number of clusters.
Without clusters every token is its own cluster and this is the usual s/√n (with n/(n−1)).

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
    """A mean (or derived value), its standard error, ``n`` tokens in ``clusters`` groups."""

    value: float
    se: float
    n: int
    clusters: int


def mean_se(x: ArrayLike, clusters: ArrayLike | None = None) -> Estimate:
    """Mean of ``x`` (N,) with the cluster-robust standard error described in the module doc.

    >>> round(mean_se([1.0, 1.0, 3.0, 3.0], clusters=[0, 0, 1, 1]).se, 6)
    1.0
    """
    values = np.asarray(x, dtype=np.float64)
    n = values.size
    if n == 0:
        return Estimate(math.nan, math.nan, 0, 0)
    mean = float(values.mean())
    groups = np.arange(n) if clusters is None else np.asarray(clusters)
    _, inverse = np.unique(groups, return_inverse=True)
    sums = np.bincount(inverse, weights=values)  # (G,)
    counts = np.bincount(inverse)  # (G,)
    g = sums.size
    if g < 2:
        return Estimate(mean, math.nan, n, g)
    resid = sums - counts * mean
    var = g / (g - 1) * float((resid**2).sum()) / n**2
    return Estimate(mean, math.sqrt(var), n, g)


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
    return Estimate(ppl, ppl * est.se, est.n, est.clusters)


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
