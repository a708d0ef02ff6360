"""From stored measurements to a decision: each config judged against the baseline at the
user's margins (``verdicts``), any two configs compared token by token and the groups that
cannot be told apart (``pair``, ``groups``), the config to ship and the code that
loads it (``recommend``, ``snippets``). Reads results and per-token values; runs no model.
"""

from quantscope.decide.analysis import (
    Evidence,
    Groups,
    Judged,
    evidence,
    groups,
    noise_floor,
    notes,
    pair,
    resolution,
    verdicts,
)
from quantscope.decide.recommend import Candidate, Check, Recommendation, recommend
from quantscope.decide.snippets import code
from quantscope.decide.stored import DecisionSpec
from quantscope.decide.summary import DEFAULT_MARGINS, Decision, decide

__all__ = [
    "DEFAULT_MARGINS",
    "Candidate",
    "Check",
    "Decision",
    "DecisionSpec",
    "Evidence",
    "Groups",
    "Judged",
    "Recommendation",
    "code",
    "decide",
    "evidence",
    "groups",
    "noise_floor",
    "notes",
    "pair",
    "recommend",
    "resolution",
    "verdicts",
]
