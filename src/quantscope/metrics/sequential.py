"""Group-sequential boundaries: looking at a verdict after every batch of windows and stopping
once it is resolved, with the overall error rate still at most alpha.

Each one-sided test of a verdict (Δ below the margin; Δ above it; for equivalence, Δ above
minus the margin) spends its alpha over the looks with a spending function α(t) of the
information fraction t (tokens scored / the text's tokens; Lan & DeMets, 1983, Biometrika
70(3)): at each look the boundary c_k is set so that a standard Brownian motion observed at
the looks so far crosses some boundary by t_k with probability exactly α(t_k). Looks need
not be planned ahead; only the fractions already seen enter. The crossing probabilities are
computed by numerical integration over the continuation region (Armitage, McPherson & Rowe,
1969, JRSS A 132(2); Jennison & Turnbull, 2000, "Group Sequential Methods", ch. 19).

A boundary is used as its nominal one-sided level p_k = 1 − Φ(c_k): at look k a test rejects
when its p-value — the same skew-corrected t as a fixed-sample verdict
(``metrics.equivalence``) — is below p_k (the "significance level" approach for small
samples, Jennison & Turnbull §3.8).

>>> [round(p, 4) for p in nominal_levels([0.25, 0.5, 0.75, 1.0], 0.05, "pocock")]
[0.0179, 0.0189, 0.02, 0.0209]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quantscope.metrics import equivalence as eq
from quantscope.metrics.stats import Estimate

SPENDING = ("obrien-fleming", "pocock", "linear")
DEFAULT_SPENDING = "pocock"
MIN_WINDOWS = 4  # no look before this many windows: a t on three df says little
# The looks spend 90% of alpha. The levels assume the statistics move as a Brownian motion
# observed at the looks; re-estimating the se and skewness at every look makes successive
# statistics less correlated than that, so more looks reject overall. Measured by the harness
# (tests/test_harness.py, bundled model, looks every 4 windows): spending all of alpha gave
# up to 5.4% false "KL below the margin" (bf16, 32 windows); spending 90%, at most 5.0%.
DESIGN_SHARE = 0.9


def _norm() -> Any:
    from scipy.stats import norm

    return norm


def spent(t: float, alpha: float, kind: str = DEFAULT_SPENDING) -> float:
    """α(t): the alpha spent by information fraction ``t`` (0 at 0, alpha at 1).

    - ``obrien-fleming``: 2 − 2Φ(z_{1−α/2} / √t), little early, most at the end;
    - ``pocock``: α · ln(1 + (e − 1) t), spent evenly across the looks;
    - ``linear``: α · t.

    >>> round(spent(0.5, 0.05, "obrien-fleming"), 5), spent(1.0, 0.05, "pocock")
    (0.00557, 0.05)
    """
    t = min(max(t, 0.0), 1.0)
    if t <= 0:
        return 0.0
    if kind == "obrien-fleming":
        z = _norm().ppf(1 - alpha / 2)
        return float(2.0 - 2.0 * _norm().cdf(z / math.sqrt(t)))
    if kind == "pocock":
        return alpha * math.log(1.0 + (math.e - 1.0) * t)
    if kind == "linear":
        return alpha * t
    raise ValueError(f"unknown spending function {kind!r}; one of {', '.join(SPENDING)}")


_GRID = 801  # points of the continuation density per look


def nominal_levels(
    times: Sequence[float], alpha: float, kind: str = DEFAULT_SPENDING
) -> list[float]:
    """The nominal one-sided level of each look at information fractions ``times``
    (increasing, in (0, 1]), so that a one-sided test rejecting when its p < level at any look
    has type-I error α(t) spent by each look, alpha at t = 1."""
    return list(_levels(tuple(float(t) for t in times), float(alpha), kind))


@functools.lru_cache(maxsize=256)
def _levels(times: tuple[float, ...], alpha: float, kind: str) -> tuple[float, ...]:
    norm = _norm()
    levels: list[float] = []
    grid: np.ndarray = np.zeros(0)  # score values s = Z·√t of the continuation region
    density: np.ndarray = np.zeros(0)
    previous_t, previous_spent = 0.0, 0.0
    for t in times:
        target = spent(t, alpha, kind) - previous_spent
        sd = math.sqrt(t)
        if not grid.size:
            c = float(norm.isf(target)) if target > 0 else math.inf
            upper = c * sd if math.isfinite(c) else 8.0 * sd
            grid = np.linspace(-8.0 * sd, upper, _GRID)
            density = norm.pdf(grid, scale=sd)
        else:
            step = math.sqrt(t - previous_t)
            weights = _trapezoid(grid) * density
            c = _boundary(weights, grid, sd, step, target)
            upper = c * sd if math.isfinite(c) else grid[-1] + 8.0 * step
            new_grid = np.linspace(grid[0] - 8.0 * step, upper, _GRID)
            kernel = norm.pdf((new_grid[:, None] - grid[None, :]) / step) / step
            grid, density = new_grid, kernel @ weights
        levels.append(float(norm.sf(c)) if math.isfinite(c) else 0.0)
        previous_t, previous_spent = t, spent(t, alpha, kind)
    return tuple(levels)


def _boundary(
    weights: np.ndarray, grid: np.ndarray, sd: float, step: float, target: float
) -> float:
    """The c whose crossing probability from the continuation density (``weights`` on
    ``grid``) at this look is ``target``."""
    from scipy.optimize import brentq

    if target <= 0:
        return math.inf
    norm = _norm()

    def excess(c: float) -> float:
        return float((weights * norm.sf((c * sd - grid) / step)).sum()) - target

    return float(brentq(excess, -10.0, 40.0, xtol=1e-10))


def _trapezoid(grid: np.ndarray) -> np.ndarray:
    """Trapezoid-rule weights of an evenly spaced grid."""
    h = grid[1] - grid[0] if len(grid) > 1 else 1.0
    w = np.full(len(grid), h)
    w[[0, -1]] = h / 2
    return w


@dataclass(frozen=True)
class Margin:
    """One verdict a config is judged on: ``metric``'s Δ against ``margin`` (in the estimate's
    units), two-sided (equivalence) or one-sided (below the margin)."""

    metric: str
    margin: float
    two_sided: bool


@dataclass
class _Sides:
    below: bool = False  # Δ < m shown
    above_minus: bool = False  # Δ > −m shown (two-sided only)
    worse: bool = False  # Δ > m shown


@dataclass
class Monitor:
    """The stopping rule of one config: after each batch, :meth:`look` with the estimates so
    far; True once every margin is resolved (equivalent, worse, or — one-sided — below the
    margin). A rejection made at one look stands (each one-sided test spends its own alpha)."""

    margins: tuple[Margin, ...]
    total_tokens: int
    alpha: float = eq.ALPHA
    spending: str = DEFAULT_SPENDING
    min_windows: int = MIN_WINDOWS
    times: list[float] = field(default_factory=list)
    looks: list[dict[str, Any]] = field(default_factory=list)
    sides: dict[str, _Sides] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spending not in SPENDING:
            raise ValueError(f"spending {self.spending!r}: one of {', '.join(SPENDING)}")
        self.sides = {m.metric: _Sides() for m in self.margins}

    def verdict(self, metric: str) -> str:
        m = next(x for x in self.margins if x.metric == metric)
        s = self.sides[metric]
        if s.below and (s.above_minus or not m.two_sided):
            return eq.EQUIVALENT
        if s.worse:
            return eq.WORSE
        if s.below:
            return eq.NONINFERIOR
        return eq.UNRESOLVED

    def resolved(self) -> bool:
        """Every margin resolved; a two-sided one needs equivalence or "worse" (stopping at
        "non-inferior" would keep it from the equivalence a fixed run reaches)."""
        return all(
            self.verdict(m.metric) in (eq.EQUIVALENT, eq.WORSE)
            or (not m.two_sided and self.verdict(m.metric) == eq.NONINFERIOR)
            for m in self.margins
        )

    def look(self, estimates: dict[str, Estimate], tokens: int) -> bool:
        """Judge the estimates at ``tokens`` scored; True when the config may stop."""
        clusters = min(e.clusters for e in estimates.values())
        if clusters < self.min_windows and tokens < self.total_tokens:
            return False
        self.times.append(min(tokens / self.total_tokens, 1.0))
        level = nominal_levels(self.times, self.alpha * DESIGN_SHARE, self.spending)[-1]
        for m in self.margins:
            est, s = estimates[m.metric], self.sides[m.metric]
            s.below = s.below or eq.p_below(est, m.margin) < level
            s.worse = s.worse or eq.p_above(est, m.margin) < level
            if m.two_sided:
                s.above_minus = s.above_minus or eq.p_above(est, -m.margin) < level
        self.looks.append(
            {
                "tokens": tokens,
                "windows": clusters,
                "level": level,
                "verdicts": {m.metric: self.verdict(m.metric) for m in self.margins},
            }
        )
        return self.resolved()

    def record(self) -> dict[str, Any]:
        """What a result keeps of the procedure."""
        return {
            "spending": self.spending,
            "alpha": self.alpha,
            "total_tokens": self.total_tokens,
            "margins": {m.metric: m.margin for m in self.margins},
            "looks": self.looks,
            "verdicts": {m.metric: self.verdict(m.metric) for m in self.margins},
            "stopped_early": bool(self.looks) and self.looks[-1]["tokens"] < self.total_tokens,
            "method": eq.METHOD,
        }
