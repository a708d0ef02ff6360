"""``quantscope sweep SWEEP.yaml``: a sweep of models × configs × texts, planned, then measured
with a live table, then every model side by side."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape

from quantscope.cli.common import (
    ProgressEvents,
    StoreOpt,
    app,
    console,
    err_console,
    progress,
    user_errors,
)
from quantscope.report.fit import fitted
from quantscope.report.side_by_side import models_table
from quantscope.results import Outcome, Status
from quantscope.specs import sweep_spec
from quantscope.sweeps import Cell, plan, run_sweep

_MARK = {
    "pending": "·",
    "running": "…",
    Status.MEASURED: "done",
    Status.REUSED: "stored",
    Status.SKIPPED: "skipped",
    Status.FAILED: "FAILED",
}


class SweepEvents:
    """Runner events drawn as one live table: per model (columns) and config (rows) pending,
    running, done, stored, skipped or failed, with the time left estimated from the
    evaluations measured so far."""

    def __init__(self, cells: list[Cell], live: Live) -> None:
        self.cells, self.live = cells, live
        self.models = list(dict.fromkeys(c.model for c in cells))
        self.state: dict[tuple[str, str], Any] = {
            (c.model, c.config): Status.REUSED if c.stored else "pending" for c in cells
        }
        self.run, self.started, self.seconds = -1, time.perf_counter(), [0.0, 0]
        self.label = ""

    def stage(self, label: str, total: int | None) -> None:
        if label == "Finding the model":
            self.run += 1
        model = self.models[min(max(self.run, 0), len(self.models) - 1)]
        config = label.rpartition(": ")[0]
        if (model, config) in self.state and self.state[(model, config)] == "pending":
            self.state[(model, config)], self.started = "running", time.perf_counter()
        self.label = label
        self.live.update(self.render())

    def advance(self, n: int) -> None:
        return None

    def outcome(self, outcome: Outcome) -> None:
        model = outcome.model or self.models[max(self.run, 0)]
        self.state[(model, outcome.config)] = outcome.status
        if outcome.status is Status.MEASURED:
            self.seconds = [
                self.seconds[0] + time.perf_counter() - self.started,
                self.seconds[1] + 1,
            ]
        self.live.update(self.render())

    def render(self) -> Group:
        rows = [
            {
                "config": config,
                **{m: str(_MARK.get(self.state.get((m, config), ""), "")) for m in self.models},
            }
            for config in dict.fromkeys(c.config for c in self.cells)
        ]
        left = sum(1 for s in self.state.values() if s in ("pending", "running"))
        done, count = self.seconds
        eta = f"about {left * done / count / 60:.1f} min left" if count else "time left: after one"
        return fitted(
            rows,
            ("config",),
            err_console.width,
            f"sweep · {self.label}",
            [f"{left} evaluations to go; {eta}"],
            left=self.models,
        )


@app.command()
@user_errors
def sweep(
    study_file: Annotated[
        Path, typer.Argument(metavar="SWEEP.yaml", help="The sweep file (YAML).")
    ],
    store: StoreOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan and stop.")] = False,
    executor: Annotated[str, typer.Option(help="local (this process) or ray.")] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster: auto or ray://HOST:PORT; none starts a local Ray."),
    ] = None,
    retries: Annotated[int, typer.Option(help="Retries of a task whose worker dies (Ray).")] = 2,
    shared_dir: Annotated[
        Path | None,
        typer.Option(help="Cache folder every Ray node sees; default: this machine's cache."),
    ] = None,
) -> None:
    """Measure a sweep of models × configs × texts × tasks, resuming what is stored."""

    study, how = sweep_spec(
        study_file,
        store=store,
        executor=executor,
        address=address,
        retries=retries,
        shared_dir=shared_dir,
    )
    with progress() as bar:
        cells = plan(study, ProgressEvents(bar))
    stored = sum(c.stored for c in cells)
    models = len({c.model for c in cells})
    console.print(
        f"Sweep {escape(study.name)}: {len(cells)} evaluations ({models} models × "
        f"{len(study.configs)} configs × {len(study.texts)} texts); {stored} already stored, "
        f"{len(cells) - stored} to measure."
    )
    if dry_run:
        return
    live = Live(
        console=err_console, refresh_per_second=2, redirect_stdout=False, redirect_stderr=False
    )
    with live:
        events = SweepEvents(cells, live)
        live.update(events.render())
        report = run_sweep(study, events, **how)
    if not err_console.is_terminal:  # rich ends a live view's last line only on a terminal
        err_console.line()

    console.print(models_table(report.runs, console.width))
    console.print(
        f"Stored as sweep {report.key}; 'quantscope report {report.key} -o sweep.html' draws "
        "the models side by side."
    )
    if report.failed:
        raise typer.Exit(1)
