"""Decisions from paired differences: tests of a difference, equivalence and non-inferiority
at a margin (two one-sided tests, TOST), groups of configs that cannot be told apart
(Holm-corrected pairwise tests, compact letter display) and sample-size planning.

Every test takes an :class:`~quantscope.metrics.stats.Estimate` of a paired difference with
its cluster-robust se and refers it to Student's t with G − 1 degrees of freedom (G windows):
with a few dozen windows a normal reference would understate the tails. Pure functions of
numbers; nothing here loads a model.

>>> from quantscope.metrics.stats import Estimate
>>> v = tost(Estimate(0.2, 0.3, 4096, 16), margin=1.0)
>>> v.verdict, round(v.p_equivalent, 4)
('equivalent', 0.0088)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantscope.metrics.stats import Estimate, mean_se

ALPHA = 0.05
POWER = 0.8

EQUIVALENT = "equivalent"  # both one-sided tests reject: −m < Δ < m
NONINFERIOR = "non-inferior"  # Δ < m shown, but Δ > −m not (better than the margin allows)
WORSE = "worse"  # Δ > m shown
UNRESOLVED = "not resolved"


def _stats() -> Any:
    """scipy.stats, imported on first use: it is 0.6 s of the command line's start
    (``python -X importtime -c 'import quantscope.cli'``), and most commands never judge."""
    from scipy import stats

    return stats


def dof(est: Estimate) -> float:
    """Degrees of freedom of a cluster-robust se: clusters − 1 (infinite when unknown)."""
    return float(est.clusters - 1) if est.clusters > 1 else math.inf


def _sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    return float(_stats().t.sf(t, df)) if math.isfinite(df) else float(_stats().norm.sf(t))


def t_quantile(q: float, df: float) -> float:
    return float(_stats().t.ppf(q, df)) if math.isfinite(df) else float(_stats().norm.ppf(q))


def paired(a: np.ndarray, b: np.ndarray, clusters: np.ndarray) -> Estimate:
    """Mean of ``a − b`` over the same tokens (N,) with its cluster-robust se."""
    return mean_se(np.asarray(a, np.float64) - np.asarray(b, np.float64), clusters)


def p_difference(est: Estimate) -> float:
    """Two-sided p of "the difference is zero".

    >>> round(p_difference(Estimate(0.6, 0.2, 100, 31)), 4)
    0.0054
    """
    if not est.se > 0:
        return 1.0 if est.value == 0 else 0.0
    return min(1.0, 2.0 * _sf(abs(est.value) / est.se, dof(est)))


def p_below(est: Estimate, bound: float) -> float:
    """One-sided p of H0 "Δ ≥ bound" (small: Δ is shown below ``bound``)."""
    if not est.se > 0:
        return 0.0 if est.value < bound else 1.0
    return _sf((bound - est.value) / est.se, dof(est))


def upper_bound(est: Estimate, alpha: float = ALPHA) -> float:
    """One-sided (1 − alpha) upper confidence bound of Δ."""
    return est.value + t_quantile(1 - alpha, dof(est)) * (est.se if est.se > 0 else 0.0)


def lower_bound(est: Estimate, alpha: float = ALPHA) -> float:
    return est.value - t_quantile(1 - alpha, dof(est)) * (est.se if est.se > 0 else 0.0)


@dataclass(frozen=True)
class Verdict:
    """A difference Δ (worse when larger) judged at ``margin``: TOST's p (``p_equivalent``,
    the larger of the two one-sided p's), the one-sided p of "Δ ≤ m" (``p_worse``: small
    when Δ is shown beyond the margin), its verdict and the confidence interval
    (1 − 2·alpha two-sided, the interval TOST's decision matches)."""

    value: float
    se: float
    margin: float
    p_equivalent: float
    p_noninferior: float
    p_worse: float
    verdict: str
    low: float
    high: float


def tost(est: Estimate, margin: float, alpha: float = ALPHA, one_sided: bool = False) -> Verdict:
    """Equivalence (|Δ| < margin) by two one-sided tests; non-inferiority (Δ < margin) alone
    when ``one_sided`` (a metric that cannot go below zero, such as KL, or where being
    better than the baseline is no concern). Δ > margin shown → "worse".

    >>> tost(Estimate(1.5, 0.2, 4096, 16), margin=1.0).verdict
    'worse'
    >>> tost(Estimate(0.5, 0.5, 4096, 16), margin=1.0).verdict
    'not resolved'
    """
    p_upper = p_below(est, margin)  # H0: Δ ≥ m
    p_lower = p_below(Estimate(-est.value, est.se, est.n, est.clusters), margin)  # H0: Δ ≤ −m
    p_equiv = p_upper if one_sided else max(p_upper, p_lower)
    p_worse = (
        _sf((est.value - margin) / est.se, dof(est))
        if est.se > 0
        else float(not est.value > margin)
    )
    if p_equiv < alpha:
        verdict = EQUIVALENT
    elif p_upper < alpha:
        verdict = NONINFERIOR
    elif p_worse < alpha:
        verdict = WORSE
    else:
        verdict = UNRESOLVED
    return Verdict(
        est.value,
        est.se,
        margin,
        p_equiv,
        p_upper,
        p_worse,
        verdict,
        lower_bound(est, alpha),
        upper_bound(est, alpha),
    )


def holm(p: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error at most alpha for any number of
    pairs, no independence assumed).

    >>> [round(x, 3) for x in holm([0.01, 0.04, 0.03])]
    [0.03, 0.06, 0.06]
    """
    order = sorted(range(len(p)), key=lambda i: p[i])
    out = [0.0] * len(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        out[i] = running
    return out


def letters(names: Sequence[str], different: set[frozenset[str]]) -> dict[str, str]:
    """A compact letter display: configs that share a letter were not shown different.

    Insert-and-absorb (Piepho, 2004, J. Comput. Graph. Stat. 13(2)): start with one group
    holding every config; for each pair shown different, split every group that holds both
    into one without each; drop groups contained in another. ``names`` come best first, so
    the best group gets "a".

    >>> letters(["x", "y", "z"], {frozenset({"x", "z"})})
    {'x': 'a', 'y': 'ab', 'z': 'b'}
    """
    groups: list[set[str]] = [set(names)]
    for pair in different:
        a, b = tuple(pair)
        split: list[set[str]] = []
        for g in groups:
            split.extend([g - {a}, g - {b}] if a in g and b in g else [g])
        groups = [g for g in split if g and not any(g < h for h in split)]
        groups = [g for i, g in enumerate(groups) if g not in groups[:i]]
    rank = {n: i for i, n in enumerate(names)}
    groups.sort(key=lambda g: sorted(rank[n] for n in g))
    out = {n: "" for n in names}
    for i, g in enumerate(groups):
        for n in g:
            out[n] += _letter(i)
    return out


def _letter(i: int) -> str:
    return "abcdefghijklmnopqrstuvwxyz"[i] if i < 26 else f"[{i}]"


def planned_se(margin: float, value: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The se at which a true difference ``value`` is resolved against ``margin`` with at
    least ``power`` (normal approximation): equivalence when |value| < margin (each of the
    two one-sided tests may miss with (1 − power)/2), "worse" when beyond it, and a
    difference against zero when ``margin`` is 0 (two-sided).

    >>> round(planned_se(1.0, 0.0), 4)
    0.3417
    """
    gap = abs(abs(value) - margin) if margin else abs(value)
    if not margin:
        z = _stats().norm.ppf(1 - alpha / 2) + _stats().norm.ppf(power)
    elif abs(value) < margin:
        z = _stats().norm.ppf(1 - alpha) + _stats().norm.ppf((1 + power) / 2)
    else:
        z = _stats().norm.ppf(1 - alpha) + _stats().norm.ppf(power)
    return float(gap / z) if gap > 0 else 0.0


def tokens_needed(est: Estimate, target_se: float) -> float:
    """Tokens (at the run's tokens per window) for the cluster-robust se to reach
    ``target_se``: se scales as 1/√windows, so n · (se / target)² (inf when unreachable).

    >>> tokens_needed(Estimate(0.0, 0.2, 4096, 16), 0.1)
    16384.0
    """
    if not target_se > 0 or not math.isfinite(est.se):
        return math.inf
    return float(est.n) * max(1.0, (est.se / target_se) ** 2)
