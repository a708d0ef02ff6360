"""The config to ship: the smallest (or fastest) one shown within the budget, with its
reason, the runners-up, and the code that loads it.

A budget counts as met only when its one-sided confidence bound meets it (the perplexity
increase by its 95% upper bound, margins by their TOST verdict); decode speed by the slowest
timed repetition; weight memory is measured, not estimated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from quantscope.config import Budget, Margins
from quantscope.decide import analysis as jd
from quantscope.decide.snippets import code
from quantscope.metrics import equivalence as eq
from quantscope.metrics.stats import estimate_of
from quantscope.results import Result, RunReport


@dataclass(frozen=True)
class Check:
    """One criterion for one config: met or not, and the figures in words."""

    name: str
    met: bool
    text: str


@dataclass(frozen=True)
class Candidate:
    result: Result
    checks: list[Check]

    @property
    def config(self) -> str:
        return self.result.config

    @property
    def ok(self) -> bool:
        return all(c.met for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.met]


@dataclass(frozen=True)
class Recommendation:
    """``chosen`` (None when nothing meets the budget; then ``closest``), why, the
    runners-up, the loading code and notes on what changes the numbers."""

    budget: Budget
    chosen: Candidate | None
    runners_up: list[Candidate]
    closest: Candidate | None
    reason: str
    code: str
    notes: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)

    def _repr_html_(self) -> str:
        """In Jupyter: the choice, why, the runners-up and the code (all text escaped)."""
        from html import escape

        head = (
            f"Recommended: <b>{escape(self.chosen.config)}</b>"
            if self.chosen
            else ("<b>No measured config meets the budget.</b>")
        )
        runners = "; ".join(escape(c.config) for c in self.runners_up)
        notes = "".join(f"<p><i>{escape(n)}</i></p>" for n in self.notes)
        return (
            f"<p>{head}</p><p>{escape(self.reason)}</p>"
            + (f"<p>Runners-up: {runners}</p>" if runners else "")
            + f"{notes}<pre>{escape(self.code)}</pre>"
        )

    def to_dict(self) -> dict[str, Any]:
        def cand(c: Candidate | None) -> dict[str, Any] | None:
            if c is None:
                return None
            checks = [{"name": k.name, "met": k.met, "text": k.text} for k in c.checks]
            return {"config": c.config, "meets": c.ok, "checks": checks}

        return {
            "chosen": cand(self.chosen),
            "closest": cand(self.closest),
            "runners_up": [cand(c) for c in self.runners_up],
            "reason": self.reason,
            "code": self.code,
            "notes": self.notes,
            "candidates": [cand(c) for c in self.candidates],
        }


def _ppl_check(r: Result, limit: float, alpha: float) -> Check:
    m = r.metrics
    est = estimate_of(m, "dppl_log")
    upper = 100 * math.expm1(eq.upper_bound(est, alpha))
    point = m["dppl_pct"]
    met = upper <= limit
    if met:
        text = (
            f"Δppl {point:+.2f}% ± {m['dppl_pct_se']:.2f} (upper bound {upper:+.2f}% ≤ {limit:g}%)"
        )
    elif point <= limit:
        text = (
            f"Δppl {point:+.2f}% meets {limit:g}% as a point estimate, but its upper bound "
            f"{upper:+.2f}% does not: not shown"
        )
    else:
        text = f"Δppl {point:+.2f}% ± {m['dppl_pct_se']:.2f} exceeds {limit:g}%"
    return Check("ppl", met, text)


def _margin_checks(r: Result, margins: Margins, alpha: float) -> list[Check]:
    out = []
    for j in jd.verdicts([r], margins, alpha):
        v = j.verdict
        met = v.verdict in (eq.EQUIVALENT, eq.NONINFERIOR)
        text = (
            f"{j.metric} {v.value:+.3g} ± {v.se:.2g} {j.unit}: {v.verdict} at margin "
            f"{v.margin:g} (p {v.p_noninferior:.2g})"
        )
        out.append(Check(j.metric, met, text))
    return out


def candidate(r: Result, budget: Budget, alpha: float = eq.ALPHA) -> Candidate:
    """``r`` checked against every part of ``budget``."""
    m, checks = r.metrics, []
    if r.invalid:
        return Candidate(r, [Check("valid", False, f"{r.config}'s {r.invalid}")])
    if budget.max_ppl_increase is not None:
        checks.append(_ppl_check(r, budget.max_ppl_increase, alpha))
    margins = budget.margins
    if budget.max_ppl_increase is not None and margins.ppl is not None:
        margins = Margins(None, margins.kl, margins.acc)  # the budget's bound judges ppl
    checks += _margin_checks(r, margins, alpha)
    if budget.max_mb is not None:
        mb = m.get("weight_mb", math.inf)
        checks.append(
            Check("mb", mb <= budget.max_mb, f"weights {mb:.1f} MB (≤ {budget.max_mb:g})")
        )
    if budget.min_decode_tps is not None:
        tps = m.get("decode_tps_min", m.get("decode_tps", 0.0))
        low = budget.min_decode_tps
        text = f"decode ≥ {tps:.1f} tok/s in every repetition (≥ {low:g})"
        checks.append(Check("tps", tps >= low, text))
    return Candidate(r, checks)


def _rank_key(budget: Budget) -> Any:
    if budget.prefer == "speed":
        return lambda c: -c.result.metrics.get("decode_tps", 0.0)
    return lambda c: c.result.metrics.get("weight_mb", math.inf)


def recommend(report: RunReport, budget: Budget, alpha: float = eq.ALPHA) -> Recommendation:
    """The config to ship under ``budget`` (see the module doc)."""
    cands = [candidate(r, budget, alpha) for r in report.results]
    ok = sorted((c for c in cands if c.ok), key=_rank_key(budget))
    settings = report.settings
    if ok:
        chosen = _tie_break(ok, budget)
        ok.remove(chosen)
        ok.insert(0, chosen)
        notes = jd.notes(chosen.result, settings)
        return Recommendation(
            budget,
            chosen,
            ok[1:4],
            None,
            _reason(chosen, ok, report, budget),
            code(chosen.result),
            notes,
            cands,
        )
    near = sorted(cands, key=lambda c: (len(c.failed), _rank_key(budget)(c)))
    closest = near[0] if near else None
    reason = "No measured config meets the budget" + (
        f"; the closest is {closest.config}, which misses: "
        + "; ".join(c.text for c in closest.failed)
        + "."
        if closest
        else "; the run has no measured config."
    )
    others = [c for c in near[1:4] if len(c.failed) == 1]
    if others:
        reason += (
            " Also one criterion short: "
            + "; ".join(f"{c.config} ({c.failed[0].text})" for c in others)
            + "."
        )
    snippet = code(closest.result) if closest else ""
    notes = jd.notes(closest.result, settings) if closest else []
    return Recommendation(budget, None, [], closest, reason, snippet, notes, cands)


SIZE_TIE = 0.01  # configs within 1% of the smallest size count as equally small


def _tie_break(ok: list[Candidate], budget: Budget) -> Candidate:
    """The first of ``ok``; by size, among those within 1% of the smallest, the lowest KL
    (equal memory: the more faithful one)."""
    if budget.prefer != "size":
        return ok[0]
    smallest = ok[0].result.metrics.get("weight_mb", math.inf)
    near = [
        c for c in ok if c.result.metrics.get("weight_mb", math.inf) <= smallest * (1 + SIZE_TIE)
    ]
    return min(near, key=lambda c: c.result.metrics.get("kl_mean", math.inf))


def _reason(chosen: Candidate, ok: list[Candidate], report: RunReport, budget: Budget) -> str:
    m, s = chosen.result.metrics, report.settings
    what = "smallest (ties within 1% of size: lowest KL)" if budget.prefer == "size" else "fastest"
    base = next(
        (r for r in report.results if r.meta.get("config") == s.get("baseline_dtype")), None
    )
    size = f"its weights take {m.get('weight_mb', math.nan):.1f} MB"
    if base is not None:
        size += f" (the {base.config} baseline: {base.metrics.get('weight_mb', math.nan):.1f} MB)"
    met = "; ".join(c.text for c in chosen.checks) or "no budget was given"
    others = len(ok) - 1
    return (
        f"{chosen.config} is the {what} of the {len(ok)} config(s) shown within the budget: "
        f"{size}, {m.get('bits_per_weight', math.nan):.2f} bits per weight, decode "
        f"{m.get('decode_tps', math.nan):.1f} tok/s, KL {m.get('kl_mean', math.nan):.3g} ± "
        f"{m.get('kl_se', math.nan):.2g}. Checked: {met}. Measured on {s.get('tokens_scored')} "
        f"tokens in {s.get('windows')} windows (context {s.get('context')}); a budget counts as "
        f"met only when its one-sided 95% bound meets it."
        + (f" {others} other config(s) also qualify (runners-up below)." if others else "")
    )
