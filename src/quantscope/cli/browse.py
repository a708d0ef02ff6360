"""Commands over stored results: ``runs``, ``show``, ``compare``, ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from quantscope.cli.common import FormatOpt, StoreOpt, app, console, user_errors
from quantscope.errors import UserError
from quantscope.quiet import Screen


def _open_store(store: Path | None) -> Any:
    from quantscope.runner import default_store
    from quantscope.store import Store

    path = store or default_store()
    if not Path(path).is_file():
        raise UserError(
            f"No results database at '{path}'; run 'quantscope run' first or pass --store."
        )
    return Store(path)


def _runs(store: Path | None) -> list[dict[str, Any]]:
    with _open_store(store) as opened:
        return opened.runs()


def _report(store: Path | None, run_id: str) -> Any:
    with _open_store(store) as opened:
        return opened.report(run_id)


def _study(store: Path | None, key: str) -> Any:
    """A stored sweep study's name and runs when ``key`` names one (``study-…``), else None."""
    if not key.startswith("study-") and key != "latest-study":
        return None
    with _open_store(store) as opened:
        found = opened.study_runs("latest" if key == "latest-study" else key)
    if found is None:
        raise UserError(f"No study '{key}' in the results database; 'quantscope sweep' makes them.")
    return found


def _emit(rows: list[dict[str, Any]], fmt: str, title: str) -> None:
    from quantscope.report.formats import render, rich_table

    if fmt == "table":
        console.print(rich_table(rows, title))
    else:
        text = render(rows, fmt)  # plain text for pipes: no rich wrapping
        Screen("stdout").write(text if text.endswith("\n") else text + "\n")


def _check_format(fmt: str) -> None:
    from quantscope.report.formats import Format

    if fmt not in {f.value for f in Format}:
        raise UserError(f"--format must be table, md, csv or json, got '{fmt}'.")


@app.command()
@user_errors
def runs(store: StoreOpt = None, fmt: FormatOpt = "table") -> None:
    """List the stored runs, newest first."""
    _check_format(fmt)
    rows = [
        {"run": r["run"], "created": r["created"], "model": r["model"], "configs": r["configs"],
         "tokens": r["settings"].get("tokens_scored")}
        for r in _runs(store)
    ]  # fmt: skip
    _emit(rows, fmt, "runs")


@app.command()
@user_errors
def show(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN", help="A run id, 'latest', a study id or 'latest-study'.")
    ],
    store: StoreOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Show one stored run (one row per config), or a study (its models side by side)."""
    from quantscope.report.formats import run_rows
    from quantscope.report.terminal import results_tables

    _check_format(fmt)
    study = _study(store, run_id)
    if study is not None:
        from quantscope.report.models import models_table

        console.print(models_table(study[1], f"study {study[0]}: models side by side"))
        return
    report = _report(store, run_id)
    if fmt == "table":
        for table in results_tables(report, console.width):
            console.print(table)
        return
    _emit(run_rows(report), fmt, f"run {report.run_id}")


@app.command()
@user_errors
def compare(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A")],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B")],
    store: StoreOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """Compare two runs config by config (same model at two times, or two models)."""
    from quantscope.report.formats import compare_rows

    _check_format(fmt)
    a, b = _report(store, run_a), _report(store, run_b)
    title = f"A = {a.run_id} ({a.provenance.get('model', '')}) · B = {b.run_id} ({b.provenance.get('model', '')})"
    _emit(compare_rows(a, b), fmt, title)


@app.command()
@user_errors
def report(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="A run id, or 'latest'.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    store: StoreOpt = None,
) -> None:
    """Write one self-contained HTML report of a stored run (tables, tradeoff plots,
    generations), or of a study (its models side by side)."""
    from quantscope.report.html import render_html
    from quantscope.report.models import render_models_html

    study = _study(store, run_id)
    html = render_models_html(*study) if study else render_html(_report(store, run_id))
    output.write_text(html, encoding="utf-8")
    console.print(f"Report written to {escape(str(output))}")
