"""Everything a run's decision shows, computed once: the recommendation, each config judged
at the margins, the groups, the baseline's noise floor and what more text would resolve."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from quantscope.config import Budget, Margins
from quantscope.decide.analysis import (
    Groups,
    Judged,
    evidence,
    groups,
    noise_floor,
    resolution,
    verdicts,
)
from quantscope.decide.recommend import Recommendation, recommend
from quantscope.errors import UserError
from quantscope.metrics import equivalence as eq
from quantscope.results import RunReport
from quantscope.store import Store

DEFAULT_MARGINS = Margins(ppl=1.0)  # the report's decision when no margin is given


@dataclass(frozen=True)
class Decision:
    margins: Margins
    recommendation: Recommendation
    judged: list[Judged]
    groups: list[Groups] = field(default_factory=list)
    floor: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)

    def answer(self, command: str) -> list[str]:
        """The run's answer in three lines: which configs are within the margins, worse, or
        not resolved; the one recommended and why; ``command``, which prints its loading
        code. A config counts as within when each of its metrics is (equivalent, or shown no
        worse than the margin), as worse when any metric is.

        >>> from quantscope.decide.recommend import Recommendation
        >>> rec = Recommendation(Budget(max_ppl_increase=1.0), None, [], None, "none fit.", "")
        >>> Decision(Margins(ppl=1.0), rec, []).answer("quantscope recommend R")[0]
        'At margin ppl=1% (TOST, alpha 0.05): no config but the baseline was judged.'
        """
        state: dict[str, str] = {}
        for j in self.judged:
            if j.verdict.value == 0 and j.verdict.se == 0:
                continue  # the baseline itself
            kind = j.verdict.verdict
            now = "within" if kind in (eq.EQUIVALENT, eq.NONINFERIOR) else kind
            old = state.get(j.config, "within")
            state[j.config] = (
                eq.WORSE if eq.WORSE in (old, now) else now if old == "within" else old
            )
        head = f"At margin {self.margins.text()} (TOST, alpha 0.05): "
        labels = {
            "within": "within the margin",
            eq.WORSE: "worse",
            eq.UNRESOLVED: "not resolved (more text would tell)",
        }
        parts = [
            f"{label}: {', '.join(c for c, v in state.items() if v == kind)}"
            for kind, label in labels.items()
            if kind in state.values()
        ]
        lines = [
            head + ("; ".join(parts) if parts else "no config but the baseline was judged") + "."
        ]
        rec = self.recommendation
        if rec.chosen is not None:
            m = rec.chosen.result.metrics
            lines.append(
                f"Recommended: {rec.chosen.config}, the smallest shown within it: "
                f"{m.get('weight_mb', float('nan')):,.1f} MB of weights, KL "
                f"{max(m.get('kl_mean', float('nan')), 0.0):.3g}, Δppl "
                f"{m.get('dppl_pct', float('nan')):+.2f}%."
            )
            lines.append(f"Its loading code, and why: {command}")
        else:
            lines.append(f"No config meets it — {rec.reason.split('. ')[0].rstrip('.')}.")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "margins": self.margins.text(),
            "recommendation": self.recommendation.to_dict(),
            "verdicts": [j.row() for j in self.judged],
            "noise_floor": self.floor,
            "unresolved": self.unresolved,
            "groups": [
                {"metric": g.metric, "order": g.order, "letters": g.letters, "method": g.method}
                for g in self.groups
            ],
        }


def decide(
    store: Store, report: RunReport, margins: Margins, budget: Budget | None = None
) -> Decision:
    """The decision of a stored run (``store`` gives the per-token values for the groups).
    Without a budget, the config recommended is the smallest within the margins, the ppl
    margin read as the largest perplexity increase allowed."""
    margins = margins or DEFAULT_MARGINS
    if budget is None:
        budget = Budget(max_ppl_increase=margins.ppl, margins=replace(margins, ppl=None))
    judged = verdicts(report.results, margins)
    ev = evidence(store, report)
    found = []
    for metric in ("ppl", "kl"):
        try:
            found.append(groups(ev, metric))
        except UserError:  # no per-token values (results from before they were kept)
            break
    return Decision(
        margins,
        recommend(report, budget),
        judged,
        found,
        noise_floor(report),
        resolution(judged, report.settings),
    )
