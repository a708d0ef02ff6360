"""Verdicts of a run that stopped each config once decided (``--until-decided``).

Such a config was scored on a random prefix of the windows and judged after every batch
against group-sequential boundaries (``metrics.sequential``); its verdict at the margins it
was run with is the one the procedure reached, not a fixed-sample test on the tokens it
happened to use (that test would not hold its error rate after looking several times). At
any other margin the fixed-sample verdict on the tokens used is given, and marked so.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from quantscope.results import Result

DESIGN_METRICS = ("ppl", "kl")


def record(result: Result) -> dict[str, Any] | None:
    """The sequential procedure's record of ``result`` (None: a fixed-sample result)."""
    found = result.meta.get("sequential")
    return found if isinstance(found, dict) else None


def design_margin(metric: str, margin: float) -> float:
    """A margin in the units the procedure judged it (ppl: on the log scale)."""
    return math.log1p(margin / 100.0) if metric == "ppl" else margin


def describe(result: Result) -> str:
    """One phrase: how many of the planned tokens the config took, and in how many looks."""
    rec = record(result)
    if rec is None:
        return ""
    looks = rec.get("looks", [])
    used = looks[-1]["tokens"] if looks else int(result.metrics.get("tokens", 0))
    planned = int(rec.get("total_tokens", used))
    how = "stopped early" if rec.get("stopped_early") else "ran to the end"
    return (
        f"{how}: {used:,} of {planned:,} tokens, {len(looks)} look(s), "
        f"{rec.get('spending')} spending"
    )


def judged_as_designed(judged: Any, result: Result, metric: str, margin: float) -> Any:
    """``judged`` (a ``decide.analysis.Judged``) with the procedure's verdict when ``margin``
    is the one the config was run with; marked as a fixed-sample verdict otherwise."""
    rec = record(result)
    if rec is None or metric not in DESIGN_METRICS:
        return judged
    design = rec.get("margins", {}).get(metric)
    if design is not None and math.isclose(design, design_margin(metric, margin), rel_tol=1e-9):
        verdict = dataclasses.replace(judged.verdict, verdict=rec["verdicts"][metric])
        return dataclasses.replace(judged, verdict=verdict, design=describe(result))
    note = f"fixed-sample verdict on the {judged.n:,} tokens of a run stopped at other margins"
    return dataclasses.replace(judged, design=note)
