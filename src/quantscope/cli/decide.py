"""``recommend``: the config to ship under a budget, with the code that loads it; and the
verdict tables ``run`` and ``show`` print with ``--margin``."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from quantscope.cli.common import (
    MarginOpt,
    MaxMbOpt,
    MaxPplOpt,
    MinTpsOpt,
    PreferOpt,
    StoreOpt,
    app,
    console,
    user_errors,
)
from quantscope.decide import Decision, notes, stored
from quantscope.errors import UserError
from quantscope.quiet import Screen
from quantscope.report.decision import groups_table, recommendation_view, verdict_table
from quantscope.results import RunReport
from quantscope.specs import by_keyword, recommend_spec


def print_verdicts(found: Decision, report: RunReport) -> None:
    """The equivalence table, the unresolved metrics' sample sizes, the noise floor, groups."""

    extra = [*found.unresolved, *found.floor]
    for r in report.results:
        extra += [f"{r.config}: {n}" for n in notes(r, report.settings)]
    title = (
        f"Against the baseline at margin {found.margins.text()} (TOST, alpha 0.05; "
        "worse = beyond the margin with p < 0.05)"
    )
    console.print(verdict_table(found.judged, title, extra, console.width))
    if found.groups:
        console.print(groups_table(found.groups, console.width))


@app.command()
@user_errors
def recommend(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="A run id, or 'latest'.")],
    max_ppl_increase: MaxPplOpt = None,
    max_mb: MaxMbOpt = None,
    min_decode_tps: MinTpsOpt = None,
    margin: MarginOpt = None,
    prefer: PreferOpt = "size",
    store: StoreOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """The config to ship: the smallest (or fastest) one shown within the budget, why, the
    runners-up, and the code that loads it."""

    if fmt not in ("table", "json"):
        raise UserError(f"--format must be table or json, got '{fmt}'.")
    found = stored.judge(by_keyword(recommend_spec, {**locals(), "run": run_id}))
    if fmt == "json":
        Screen("stdout").write(json.dumps(found.recommendation.to_dict(), indent=2) + "\n")
        return
    console.print(recommendation_view(found.recommendation))
    Screen("stdout").write(found.recommendation.code)  # unwrapped: copies as it runs
