"""Sweeps across models: models × configs × texts × tasks, measured on the same footing.

A sweep (a YAML sweep file) expands into one run per model and text; :func:`plan`
says, before anything is measured, how many evaluations it holds and which are already in the
store (their keys are the runner's, so a sweep resumes where it stopped and reuses what
``quantscope run`` measured); :func:`run_sweep` measures the rest — in this process, exactly
as ``quantscope run`` does, or as tasks on a Ray cluster (``on_ray``) — and returns every row
as one table.

>>> from quantscope.sweeps.sweep_file import parse_sweep
>>> sweep = parse_sweep({"models": ["bundled"], "configs": ["fp32", "bnb-nf4"]})
>>> len(sweep.runs())
1
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any

from quantscope import runner
from quantscope.context import prepare
from quantscope.events import Events, LogEvents
from quantscope.provenance import now
from quantscope.results import Display, RunReport, Status
from quantscope.store import Store, default_store
from quantscope.sweeps.on_ray import run_on_ray
from quantscope.sweeps.sweep_file import Sweep, parse_sweep, read_sweep

__all__ = ["Cell", "Executor", "SweepReport", "parse_sweep", "plan", "read_sweep", "run_sweep"]


@dataclass(frozen=True)
class Cell:
    """One evaluation of a sweep: a config on a model and a text, and whether it is stored."""

    model: str
    text: str
    config: str
    key: str
    stored: bool


def plan(sweep: Sweep, events: Events | None = None) -> list[Cell]:
    """Every evaluation of the sweep, model by model, and which ones the store already holds
    (finding the models and tokenizing the texts, loading no weights)."""
    events = events or LogEvents()
    cells = []
    with Store(sweep.store or default_store()) as store:
        for spec in sweep.runs():
            ctx = prepare(spec, events)
            for config in spec.configs:
                key = ctx.key(config)
                stored = store.get(key) is not None
                cells.append(Cell(ctx.files.name, ctx.text_name, config.display, key, stored))
    return cells


@dataclass
class SweepReport(Display):
    """Every run of a sweep (one per model and text), and all their rows as one table."""

    name: str
    runs: list[RunReport]
    key: str = (
        ""  # where the sweep is stored (``quantscope show KEY`` puts its models side by side)
    )

    def to_dataframe(self) -> Any:
        """One row per model, text and config: model, text, status, then every metric."""
        import pandas as pd

        rows = [
            {
                "model": r.provenance.get("model"),
                "text": r.provenance.get("text"),
                "status": o.status.value,
                **(o.result.row() if o.result else {"config": o.config}),
            }
            for r in self.runs
            for o in r.outcomes
        ]
        return pd.DataFrame(rows)

    @property
    def failed(self) -> bool:
        return any(o.status is Status.FAILED for r in self.runs for o in r.outcomes)


class Executor(str, Enum):
    LOCAL = "local"  # in this process, one evaluation after another (``quantscope run``'s way)
    RAY = "ray"  # as Ray tasks on a cluster (``on_ray``)


def run_sweep(
    sweep: Sweep,
    events: Events | None = None,
    executor: Executor = Executor.LOCAL,
    address: str | None = None,
    retries: int = 2,
    shared_dir: str | None = None,
) -> SweepReport:
    """Measure every evaluation the store does not hold yet; each is stored as it finishes.

    ``local`` runs them in this process, run by run (the same numbers as ``quantscope run``);
    ``ray`` sends them to the Ray cluster at ``address`` (``auto``, ``ray://HOST:PORT``, or
    None for a local Ray instance), retrying a task whose worker dies ``retries`` times, with
    the cache folder the workers share at ``shared_dir``."""
    events = events or LogEvents()
    if Executor(executor) is Executor.RAY:
        reports = run_on_ray(sweep, events, address, retries, shared_dir)
    else:
        reports = [runner.run(spec, events) for spec in sweep.runs()]
    key = f"sweep-{now().replace(':', '').replace('+0000', '')}-{uuid.uuid4().hex[:6]}"
    with Store(sweep.store or default_store()) as store:
        body = {
            "name": sweep.name,
            "runs": [r.run_id for r in reports],
            "executor": Executor(executor).value,
        }
        store.put_analysis(key, "sweep", body)
    return SweepReport(sweep.name, reports, key)
