"""Commands over stored results: ``runs``, ``show``, ``compare``, ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from quantscope.cli.common import (
    FormatOpt,
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
from quantscope.cli.decide import print_verdicts
from quantscope.decide import DecisionSpec, stored
from quantscope.errors import UserError
from quantscope.quiet import Screen
from quantscope.report.decision import decision_html, pair_table, verdict_rows
from quantscope.report.formats import (
    Format,
    compare_cells,
    compare_rows,
    render,
    rich_table,
    run_rows,
)
from quantscope.report.html import render_html
from quantscope.report.side_by_side import models_table, render_models_html
from quantscope.report.terminal import outcome_notes, results_tables, serving_table
from quantscope.results import RunReport
from quantscope.specs import by_keyword, compare_spec, judge_spec, recommend_spec
from quantscope.store import open_existing


def _runs(store: Path | None) -> list[dict[str, Any]]:
    with open_existing(store) as opened:
        return opened.runs()


def _report(store: Path | None, run_id: str) -> RunReport:
    with open_existing(store) as opened:
        return opened.report(run_id)


def _sweep(store: Path | None, key: str) -> tuple[str, list[RunReport]] | None:
    """A stored sweep's name and runs when ``key`` names one (``sweep-…``; ``study-…`` before
    0.2), else None."""
    if not key.startswith(("sweep-", "study-")) and key not in ("latest-sweep", "latest-study"):
        return None
    with open_existing(store) as opened:
        found = opened.sweep_runs("latest" if key.startswith("latest-") else key)
    if found is None:
        raise UserError(f"No sweep '{key}' in the results database; 'quantscope sweep' makes them.")
    return found


def _emit(
    rows: list[dict[str, Any]],
    fmt: str,
    title: str,
    table: list[Any] | None = None,
    prose: tuple[str, ...] = (),
) -> None:
    """``rows`` in ``fmt``; on the terminal ``table`` (the same rows as they read best) if
    given, its ``prose`` columns wrapped at their spaces."""
    if fmt == "table":
        console.print(rich_table(table or rows, title, console.width, prose))
    else:
        text = render(rows, fmt)  # plain text for pipes: no rich wrapping
        Screen("stdout").write(text if text.endswith("\n") else text + "\n")


def _check_format(fmt: str) -> None:

    if fmt not in {f.value for f in Format}:
        raise UserError(f"--format must be table, md, csv or json, got '{fmt}'.")


@app.command()
@user_errors
def runs(store: StoreOpt = None, fmt: FormatOpt = "table") -> None:
    """List the stored runs, newest first."""
    _check_format(fmt)
    rows = [
        {
            "run": r["run"],
            "created": r["created"],
            "model": r["model"],
            "configs": r["configs"],
            "tokens": r["settings"].get("tokens_scored"),
        }
        for r in _runs(store)
    ]
    if fmt == "table":  # to the minute, and the id on one line: a reader copies it
        rows = [{**r, "created": str(r["created"])[:16].replace("T", " ")} for r in rows]
    _emit(rows, fmt, "runs", prose=("model",))


@app.command()
@user_errors
def show(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN", help="A run id, 'latest', a sweep id or 'latest-sweep'.")
    ],
    store: StoreOpt = None,
    fmt: FormatOpt = "table",
    margin: MarginOpt = None,
) -> None:
    """Show one stored run (one row per config), or a sweep (its models side by side); with
    --margin, each config judged against the baseline at that margin."""

    _check_format(fmt)
    study = _sweep(store, run_id)
    if study is not None:
        console.print(
            models_table(study[1], console.width, f"sweep {study[0]}: models side by side")
        )
        return
    report = _report(store, run_id)
    found = stored.judge(judge_spec(report, margin=margin, store=store)) if margin else None
    if fmt == "table":
        for table in results_tables(report, console.width):
            console.print(table)
        served = serving_table(report, console.width)
        if served is not None:
            console.print(served)
        for note in outcome_notes(report):
            console.print(note, style="yellow")
        if found is not None:
            print_verdicts(found, report)
        return
    if found is not None and fmt == "json":
        import json

        body = {"results": run_rows(report), "decision": found.to_dict()}
        Screen("stdout").write(json.dumps(body, indent=2, default=str) + "\n")
        return
    _emit(run_rows(report), fmt, f"run {report.run_id}")
    if found is not None:
        _emit(verdict_rows(found.judged), fmt, f"margin {found.margins.text()}")


@app.command()
@user_errors
def compare(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A")],
    run_b: Annotated[str | None, typer.Argument(metavar="[RUN_B]")] = None,
    pair: Annotated[
        str | None,
        typer.Option(
            help="Two configs of RUN_A, 'A,B': compared token by token (Δ ± se, p) instead of two runs."
        ),
    ] = None,
    store: StoreOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Compare two runs config by config (same model at two times, or two models), or with
    --pair two configs of one run token by token."""

    _check_format(fmt)
    if pair is not None:
        _pair(store, run_a, pair, fmt)
        return
    if run_b is None:
        raise UserError("compare takes two runs (RUN_A RUN_B), or one run and --pair A,B.")
    a, b = _report(store, run_a), _report(store, run_b)
    title = f"A = {a.run_id} ({a.provenance.get('model', '')}) · B = {b.run_id} ({b.provenance.get('model', '')})"
    rows = compare_rows(a, b)
    _emit(rows, fmt, title, compare_cells(rows))


def _pair(store: Path | None, run_id: str, pair: str, fmt: str) -> None:
    spec = compare_spec(run_id, pair=pair, store=store)
    assert spec.pair is not None
    names = spec.pair
    rows = stored.compare(spec)
    if fmt == "table":
        console.print(pair_table(rows, console.width))
    else:
        _emit(rows, fmt, f"{names[0]} − {names[1]}")


@app.command()
@user_errors
def report(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="A run id, or 'latest'.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    store: StoreOpt = None,
    margin: MarginOpt = None,
    max_ppl_increase: MaxPplOpt = None,
    max_mb: MaxMbOpt = None,
    min_decode_tps: MinTpsOpt = None,
    prefer: PreferOpt = "size",
) -> None:
    """Write one self-contained HTML report of a stored run — opening with the decision
    (recommendation and its code, verdicts at the margin, groups), then tables, tradeoff
    plots, generations — or of a study (its models side by side)."""

    study = _sweep(store, run_id)
    if study:
        html = render_models_html(*study)
    else:
        options = {**locals(), "run": _report(store, run_id)}
        budgeted = max_ppl_increase or max_mb or min_decode_tps or prefer != "size"
        html = run_html(by_keyword(recommend_spec if budgeted else judge_spec, options))
    output.write_text(html, encoding="utf-8")
    console.print(f"Report written to {escape(str(output))}")


def run_html(spec: DecisionSpec) -> str:
    """A run's HTML report, opening with its decision (``spec.run``: its report)."""

    found = stored.judge(spec)
    report = spec.run
    assert isinstance(report, RunReport)
    rec = found.recommendation
    section = decision_html(
        rec, found.judged, found.margins.text(), found.groups, found.floor, found.unresolved
    )
    spread = stored.kl_spread(spec)
    return render_html(report, section, rec.chosen.config if rec.chosen else None, spread)
