"""Decisions from paired differences: tests of a difference, equivalence and non-inferiority
at a margin (two one-sided tests, TOST), groups of configs that cannot be told apart
(Holm-corrected pairwise tests, compact letter display) and sample-size planning.

Every test takes an :class:`~quantscope.metrics.stats.Estimate` of a paired difference with
its cluster-robust se and the shape of its cluster residuals, and refers a skewness-corrected
t to Student's t (``METHOD``): per-token KL and loss changes are heavily right-skewed, so
their window means are too, and a plain t on a skewed mean over a few dozen windows claims
"below the margin" too often (measured on the bundled model's own windows: 6–10% at nominal
5%; README, "How sure is a verdict"). The correction, chosen by that measurement:

- Hall's monotone cubic transformation of the studentised mean (Hall, 1992, "On the removal
  of skewness by transformation", JRSS B 54(1)), which removes the n^-1/2 skewness term of
  its Edgeworth expansion, with the skewness taken one standard error *towards the side the
  claim needs* (a sample that missed the text's rare hard windows underestimates it);
- degrees of freedom that shrink with the residuals' excess kurtosis κ, as the variance of
  a variance does: ν = 2 / (2/(G−1) + κ/G) (G windows; κ = 0 gives G − 1).

Pure functions of numbers (scalars, or numpy arrays for the simulations); nothing here loads
a model.

>>> from quantscope.metrics.stats import Estimate
>>> v = tost(Estimate(0.2, 0.3, 4096, 16), margin=1.0)
>>> v.verdict, round(v.p_equivalent, 4)
('equivalent', 0.0163)
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


METHOD = "skew-corrected t (Hall's transform, skewness at +1 se, kurtosis-adjusted df)"
SKEW_MARGIN = 1.0  # standard errors of the skewness added on the side a claim needs


def degrees_of_freedom(clusters: Any, kurtosis: Any = 0.0) -> Any:
    """ν = 2 / (2/(G−1) + κ/G) for G clusters with excess kurtosis κ (G − 1 below 4
    clusters; infinite when unknown)."""
    g = np.asarray(clusters, dtype=np.float64)
    k = np.where(g >= 4, np.asarray(kurtosis, dtype=np.float64), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        nu = 2.0 / (2.0 / (g - 1.0) + k / g)
    return np.where(g > 1, nu, np.inf)


def dof(est: Estimate) -> float:
    """Degrees of freedom of an estimate's reference t (see :func:`degrees_of_freedom`)."""
    return float(degrees_of_freedom(est.clusters, est.kurtosis))


def skew_se(clusters: Any) -> Any:
    """Standard error of a sample skewness of G values: √(6(G−2) / ((G+1)(G+3)))."""
    g = np.maximum(np.asarray(clusters, dtype=np.float64), 2.0)
    return np.sqrt(6.0 * (g - 2.0) / ((g + 1.0) * (g + 3.0)))


def _a(clusters: Any, skew: Any, towards: float) -> Any:
    """Hall's a = γ/√G with γ moved ``towards`` (+1 or −1) by SKEW_MARGIN se."""
    g = np.maximum(np.asarray(clusters, dtype=np.float64), 1.0)
    gamma = np.asarray(skew, dtype=np.float64) + towards * SKEW_MARGIN * skew_se(g)
    return np.where(g > 2, gamma / np.sqrt(g), 0.0)


def _transform(t: Any, a: Any) -> Any:
    """Hall's g(T) = T + aT²/3 + a²T³/27 + a/6 = ((1 + aT/3)³ − 1)/a + a/6 (monotone)."""
    t = np.asarray(t, dtype=np.float64)
    return t + a * t**2 / 3.0 + a**2 * t**3 / 27.0 + a / 6.0


def _inverse(x: Any, a: Any) -> Any:
    """T with g(T) = x."""
    x = np.asarray(x, dtype=np.float64) - a / 6.0
    small = np.abs(a) < 1e-12
    safe = np.where(small, 1.0, a)
    return np.where(small, x, 3.0 / safe * (np.cbrt(1.0 + safe * x) - 1.0))


def t_cdf(x: Any, df: Any) -> Any:
    return _stats().t.cdf(x, df)


def t_ppf(q: Any, df: Any) -> Any:
    return _stats().t.ppf(q, df)


def bounds(
    value: Any, se: Any, clusters: Any, skew: Any, kurtosis: Any, level: Any, upper: bool
) -> Any:
    """One-sided ``level`` confidence bound(s) of a mean (arrays broadcast): the upper bound
    takes the skewness one se higher, the lower one se lower."""
    df = degrees_of_freedom(clusters, kurtosis)
    a = _a(clusters, skew, 1.0 if upper else -1.0)
    q = t_ppf(level, df)
    t = _inverse(-q if upper else q, a)
    se = np.where(np.asarray(se, dtype=np.float64) > 0, se, 0.0)
    return np.asarray(value, dtype=np.float64) - se * t


def p_values(
    value: Any, se: Any, clusters: Any, skew: Any, kurtosis: Any, bound: Any, below: bool
) -> Any:
    """One-sided p of H0 "mean ≥ bound" (``below``: small when the mean is shown below it) or
    of H0 "mean ≤ bound" (small when shown above), consistent with :func:`bounds`: p < α
    exactly when the (1 − α) bound lies beyond ``bound``."""
    value = np.asarray(value, dtype=np.float64)
    se = np.asarray(se, dtype=np.float64)
    df = degrees_of_freedom(clusters, kurtosis)
    a = _a(clusters, skew, 1.0 if below else -1.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = (value - bound) / se
        g = _transform(t, a)
    p = t_cdf(g, df) if below else 1.0 - t_cdf(g, df)
    degenerate = (value < bound) if below else (value > bound)
    return np.where(se > 0, p, np.where(degenerate, 0.0, 1.0))


def t_quantile(q: float, df: float) -> float:
    return float(_stats().t.ppf(q, df)) if math.isfinite(df) else float(_stats().norm.ppf(q))


def paired(a: np.ndarray, b: np.ndarray, clusters: np.ndarray) -> Estimate:
    """Mean of ``a − b`` over the same tokens (N,) with its cluster-robust se."""
    return mean_se(np.asarray(a, np.float64) - np.asarray(b, np.float64), clusters)


def _p(est: Estimate, bound: float, below: bool) -> float:
    return float(p_values(est.value, est.se, est.clusters, est.skew, est.kurtosis, bound, below))


def p_difference(est: Estimate) -> float:
    """Two-sided p of "the difference is zero" (twice the smaller one-sided p).

    >>> round(p_difference(Estimate(0.6, 0.2, 100, 31)), 4)
    0.0093
    """
    if not est.se > 0:
        return 1.0 if est.value == 0 else 0.0
    return min(1.0, 2.0 * min(_p(est, 0.0, True), _p(est, 0.0, False)))


def p_below(est: Estimate, bound: float) -> float:
    """One-sided p of H0 "Δ ≥ bound" (small: Δ is shown below ``bound``)."""
    return _p(est, bound, True)


def p_above(est: Estimate, bound: float) -> float:
    """One-sided p of H0 "Δ ≤ bound" (small: Δ is shown above ``bound``)."""
    return _p(est, bound, False)


def upper_bound(est: Estimate, alpha: float = ALPHA) -> float:
    """One-sided (1 − alpha) upper confidence bound of Δ."""
    b = bounds(est.value, est.se, est.clusters, est.skew, est.kurtosis, 1 - alpha, True)
    return float(b)


def lower_bound(est: Estimate, alpha: float = ALPHA) -> float:
    b = bounds(est.value, est.se, est.clusters, est.skew, est.kurtosis, 1 - alpha, False)
    return float(b)


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
    p_lower = p_above(est, -margin)  # H0: Δ ≤ −m
    p_equiv = p_upper if one_sided else max(p_upper, p_lower)
    p_worse = p_above(est, margin)  # H0: Δ ≤ m
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
