"""``recommend``: the config to ship under a budget, with the code that loads it; and what
``run``, ``show``, ``report`` and ``compare --pair`` share to show a decision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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
from quantscope.quiet import Screen


def budget(max_ppl_increase: str | None, max_mb: float | None, min_decode_tps: float | None,
           margin: str | None, prefer: str) -> Any:  # fmt: skip
    from quantscope.config import Budget, parse_margins, parse_percent

    return Budget(parse_percent(max_ppl_increase, "max-ppl-increase"), max_mb, min_decode_tps,
                  parse_margins(margin), prefer)  # fmt: skip


def decision(store: Path | str, report: Any, margin: str | None, chosen_budget: Any = None) -> Any:
    """The decision of ``report`` (stored in ``store``) at ``margin``."""
    from quantscope.config import parse_margins
    from quantscope.decide import decide
    from quantscope.store import Store

    with Store(store) as opened:
        return decide(opened, report, parse_margins(margin), chosen_budget)


def print_verdicts(found: Any, report: Any) -> None:
    """The equivalence table, the unresolved metrics' sample sizes, the noise floor, groups."""
    from quantscope.decide import notes
    from quantscope.report.decision import groups_table, verdict_table

    extra = [*found.unresolved, *found.floor]
    for r in report.results:
        extra += [f"{r.config}: {n}" for n in notes(r, report.settings)]
    title = (f"Against the baseline at margin {found.margins.text()} (TOST, alpha 0.05; "
             "worse = beyond the margin with p < 0.05)")  # fmt: skip
    console.print(verdict_table(found.judged, title, extra))
    for g in found.groups:
        console.print(groups_table(g))


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
    from quantscope.cli.browse import _open_store
    from quantscope.errors import UserError
    from quantscope.report.decision import recommendation_view

    if fmt not in ("table", "json"):
        raise UserError(f"--format must be table or json, got '{fmt}'.")
    chosen = budget(max_ppl_increase, max_mb, min_decode_tps, margin, prefer)
    with _open_store(store) as opened:
        report = opened.report(run_id)
        path = opened.path
    found = decision(path, report, margin, chosen)
    if fmt == "json":
        Screen("stdout").write(json.dumps(found.recommendation.to_dict(), indent=2) + "\n")
        return
    console.print(recommendation_view(found.recommendation))
    Screen("stdout").write(found.recommendation.code)  # unwrapped: copies as it runs
