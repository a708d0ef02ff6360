"""A stored run judged: each config against the baseline at the user's margins, any two
configs against each other token by token, the groups that cannot be told apart, the
baseline's own noise floor, and how many tokens would resolve what is not resolved.

Against the baseline the run's own paired estimates are used (Δ ln ppl, mean KL, task
accuracy change), so results measured before per-token values were kept are judged too;
pairs of configs and groups need the per-token values (``token_values``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from quantscope.config import Margins
from quantscope.decide import sequential as sq
from quantscope.errors import UserError
from quantscope.metrics import equivalence as eq
from quantscope.metrics.stats import Estimate, estimate_of, flips
from quantscope.results import Result, RunReport
from quantscope.store import Store
from quantscope.token_values import TokenValues

INT8_NOTE = (
    "LLM.int8 picks its outlier columns per batch, so bnb-int8's numbers depend on which "
    "windows share a batch (--batch-size {batch}): compare bnb-int8 runs at the same batch "
    "size."
)


@dataclass(frozen=True)
class Evidence:
    """A run and each measured config's per-token values (None: measured before they were
    kept, or reused from such a result)."""

    report: RunReport
    token_values: dict[str, TokenValues | None]

    @property
    def results(self) -> list[Result]:
        return self.report.results

    def values(self, config: str) -> TokenValues:
        bad = [r.invalid for r in self.results if r.config == config and r.invalid]
        if bad:
            raise UserError(f"'{config}' has no accuracy to compare: {bad[0]}.")
        if config not in self.token_values:
            known = ", ".join(self.token_values) or "none"
            raise UserError(
                f"Run {self.report.run_id} has no measured config '{config}' ({known})."
            )
        tv = self.token_values.get(config)
        if tv is None:
            raise UserError(
                f"'{config}' in run {self.report.run_id} was measured before quantscope kept "
                "per-token values; rerun it with --force to compare it token by token."
            )
        return tv


def evidence(store: Store, report: RunReport) -> Evidence:
    """``report``'s configs with their per-token values from ``store``."""
    tokens = {}
    for r in report.results:
        if r.invalid:  # no accuracy to compare
            continue
        blob = store.token_values(r.key)
        tokens[r.config] = TokenValues.from_bytes(blob) if blob is not None else None
    return Evidence(report, tokens)


def notes(result: Result, settings: dict[str, Any]) -> list[str]:
    """What changes this config's numbers without the user knowing."""
    if str(result.meta.get("config", result.config)).startswith("bnb-int8"):
        return [INT8_NOTE.format(batch=settings.get("batch_size", "?"))]
    return []


# --- one config against the baseline, at a margin -------------------------------------


@dataclass(frozen=True)
class Judged:
    """One config's metric judged against the baseline: Δ in ``unit`` (worse when larger),
    its verdict at ``margin``, and the tokens (task items for acc) that would resolve it."""

    config: str
    metric: str
    unit: str
    verdict: eq.Verdict
    n: int
    needed: float  # tokens or items; NaN when resolved
    design: str = ""  # how a run stopped when decided reached it ("": a fixed sample)

    def row(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "config": self.config,
            "metric": self.metric,
            "unit": self.unit,
            "delta": v.value,
            "se": v.se,
            "low": v.low,
            "high": v.high,
            "margin": v.margin,
            "p_equivalent": v.p_equivalent,
            "p_noninferior": v.p_noninferior,
            "p_worse": v.p_worse,
            "verdict": v.verdict,
            "n": self.n,
            "needed": self.needed,
            "method": eq.METHOD,
            "design": self.design or "fixed sample",
        }


def _pct(x: float) -> float:
    return 100.0 * math.expm1(x)


def _ppl(result: Result, margin: float, alpha: float) -> Judged:
    """Perplexity change on the log scale (symmetric: ±ln(1 + m/100)), shown in %."""
    est = estimate_of(result.metrics, "dppl_log")
    log_margin = math.log1p(margin / 100.0)
    v = eq.tost(est, log_margin, alpha)
    scale = 100.0 * math.exp(est.value)
    shown = eq.Verdict(
        _pct(v.value),
        scale * v.se,
        margin,
        v.p_equivalent,
        v.p_noninferior,
        v.p_worse,
        v.verdict,
        _pct(v.low),
        _pct(v.high),
    )
    return Judged(result.config, "ppl", "%", shown, est.n, _needed(est, log_margin, v))


def _kl(result: Result, margin: float, alpha: float) -> Judged:
    """Mean KL (never below zero: only "below the margin" is tested)."""
    est = estimate_of(result.metrics, "kl")
    v = eq.tost(est, margin, alpha, one_sided=True)
    return Judged(result.config, "kl", "nats", v, est.n, _needed(est, margin, v))


def _acc(result: Result, task: str, t: dict[str, Any], margin: float, alpha: float) -> Judged:
    """Task accuracy lost, in points (items are independent: each its own cluster), from the
    flips (``metrics.stats.flips``)."""
    n = max(int(t["n"]), 1)
    est = flips(int(t["correct_to_wrong"]), int(t["wrong_to_correct"]), n)
    v = eq.tost(est, margin, alpha)
    return Judged(result.config, f"acc:{task}", "pts", v, n, _needed(est, margin, v))


def _needed(est: Estimate, margin: float, v: eq.Verdict) -> float:
    if v.verdict != eq.UNRESOLVED:
        return math.nan
    return eq.tokens_needed(est, eq.planned_se(margin, est.value))


def verdicts(results: list[Result], margins: Margins, alpha: float = eq.ALPHA) -> list[Judged]:
    """Every measured config and margin metric against the baseline."""
    out = []
    for r in results:
        if margins.ppl is not None and "dppl_log" in r.metrics:
            out.append(sq.judged_as_designed(_ppl(r, margins.ppl, alpha), r, "ppl", margins.ppl))
        if margins.kl is not None and "kl_mean" in r.metrics:
            out.append(sq.judged_as_designed(_kl(r, margins.kl, alpha), r, "kl", margins.kl))
        if margins.acc is not None:
            out.extend(_acc(r, name, t, margins.acc, alpha) for name, t in r.tasks.items())
    return out


def resolution(judged: list[Judged], settings: dict[str, Any]) -> list[str]:
    """One sentence per metric whose verdicts are not all resolved: how many tokens (items)
    the text would need for every config's to be, at 80% power."""
    out = []
    for metric in dict.fromkeys(j.metric for j in judged):
        open_ = [j for j in judged if j.metric == metric and j.verdict.verdict == eq.UNRESOLVED]
        if not open_:
            continue
        worst = max(open_, key=lambda j: j.needed)
        unit = "task items" if metric.startswith("acc") else "tokens"
        have = worst.n if metric.startswith("acc") else settings.get("tokens_scored", worst.n)
        if math.isfinite(worst.needed):
            times = worst.needed / max(have, 1)
            need = f"about {worst.needed:,.0f} {unit} ({times:.1f}× this run's {have:,})"
        else:
            need = "more than any text can give (its Δ sits on the margin)"
        out.append(
            f"{metric}: {len(open_)} config(s) not resolved at this sample size "
            f"({', '.join(j.config for j in open_)}); resolving all would take {need}."
        )
    return out


def noise_floor(report: RunReport) -> list[str]:
    """The baseline's own noise: its config against its own reference (the cache estimate of
    KL, with the sampling se of that estimate), and bf16 against an fp32 baseline."""
    base = str(report.settings.get("baseline_dtype", ""))
    by = {str(r.meta.get("config", r.config)): r for r in report.results}
    out = []
    if base in by:
        m = by[base].metrics
        out.append(
            f"{base} (the baseline itself) against its reference: KL {m['kl_mean']:.2g} "
            f"(sampling se of the cache estimate {m.get('kl_sampling_se', 0.0):.2g}), "
            f"Δppl {m['dppl_pct']:+.3f}%."
        )
    else:
        out.append(f"The baseline ({base}) is not among the configs; add it to see its floor.")
    if base == "fp32" and "bf16" in by:
        m = by["bf16"].metrics
        out.append(
            f"bf16 against the fp32 baseline: KL {m['kl_mean']:.3g} ± {m['kl_se']:.2g}, "
            f"Δppl {m['dppl_pct']:+.2f} ± {m['dppl_pct_se']:.2f}% — the precision floor: "
            "a difference this small is rounding, not quantization."
        )
    return out


# --- two configs against each other; groups ---------------------------------------------

_PAIR_METRICS = (("ppl", "%"), ("kl", "nats"), ("top1", "pts"))


def _paired_estimate(a: TokenValues, b: TokenValues, metric: str) -> Estimate:
    if metric == "ppl":
        return eq.paired(a.nll, b.nll, a.clusters)
    if metric == "kl":
        return eq.paired(a.kl, b.kl, a.clusters)
    # top-1 agreement with the baseline, in points: positive = A agrees less (worse)
    return eq.paired(b.agree.astype(float), a.agree.astype(float), a.clusters).scaled(100.0)


def pair(ev: Evidence, a: str, b: str, alpha: float = eq.ALPHA) -> list[dict[str, Any]]:
    """A − B per metric, token by token (worse when positive): Δ ± se, the two-sided p, the
    1 − alpha confidence interval and the tokens that would resolve a difference this size
    at 80% power."""
    ta, tb = ev.values(a), ev.values(b)
    if not ta.same_tokens(tb):
        raise UserError(
            f"'{a}' and '{b}' were not scored on the same tokens; compare runs instead."
        )
    rows = []
    for metric, unit in _PAIR_METRICS:
        est = _paired_estimate(ta, tb, metric)
        low, high = eq.lower_bound(est, alpha / 2), eq.upper_bound(est, alpha / 2)
        value, se = est.value, est.se
        if metric == "ppl":  # ratio of perplexities, shown in %
            value, se, low, high = _pct(value), 100 * math.exp(value) * se, _pct(low), _pct(high)
        p = eq.p_difference(est)
        needed = eq.tokens_needed(est, eq.planned_se(0.0, est.value)) if p >= alpha else math.nan
        rows.append(
            {
                "metric": metric,
                "unit": unit,
                "a": a,
                "b": b,
                "delta": value,
                "se": se,
                "low": low,
                "high": high,
                "p": p,
                "n": est.n,
                "needed": needed,
                "method": eq.METHOD,
            }
        )
    return rows


@dataclass(frozen=True)
class Groups:
    """Configs best first with their letters (shared letter: not shown different), the mean
    each was ranked by, and how the pairs were tested."""

    metric: str
    order: list[str]
    means: dict[str, float]
    letters: dict[str, str]
    method: str


def groups(ev: Evidence, metric: str = "ppl", alpha: float = eq.ALPHA) -> Groups:
    """Configs that cannot be told apart on ``metric`` (ppl: token loss; kl): every pair
    tested token by token (paired t on the cluster-robust se), Holm's correction over the
    pairs, then a compact letter display."""
    have = [c for c, tv in ev.token_values.items() if tv is not None]
    if not have:
        raise UserError("No config of this run has per-token values; rerun with --force.")
    first = ev.token_values[have[0]]
    assert first is not None
    same = [c for c in have if ev.values(c).same_tokens(first)]

    def per_token(c: str) -> np.ndarray:
        tv = ev.values(c)
        return tv.nll if metric == "ppl" else tv.kl

    means = {c: float(per_token(c).mean()) for c in same}
    order = sorted(same, key=lambda c: means[c])
    pairs = list(combinations(order, 2))
    p = [eq.p_difference(eq.paired(per_token(x), per_token(y), first.clusters)) for x, y in pairs]
    adjusted = eq.holm(p)
    different = {frozenset(xy) for xy, q in zip(pairs, adjusted, strict=True) if q < alpha}
    method = (
        f"paired tests on per-token {'loss' if metric == 'ppl' else 'KL'} "
        f"({eq.METHOD}; cluster-robust se over {len(np.unique(first.clusters))} "
        f"windows), Holm-corrected over {len(pairs)} pairs, alpha {alpha:g}"
    )
    return Groups(metric, order, means, eq.letters(order, different), method)
