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
