"""Studies across models: models × configs × texts × tasks, measured on the same footing.

A study (``study``: the YAML file) expands into one run per model and text; :func:`plan`
says, before anything is measured, how many evaluations it holds and which are already in the
store (their keys are the runner's, so a study resumes where it stopped and reuses what
``quantscope run`` measured); :func:`run_study` measures the rest with the local executor —
in this process, exactly as ``quantscope run`` does — and returns every row as one table.

>>> from quantscope.sweep.study import parse_study
>>> study = parse_study({"models": ["bundled"], "configs": ["fp32", "bnb-nf4"]})
>>> len(study.runs())
1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantscope import runner
from quantscope.events import Events, LogEvents
from quantscope.results import RunReport, Status
from quantscope.store import Store
from quantscope.sweep.study import Study, parse_study, read_study

__all__ = ["Cell", "StudyReport", "parse_study", "plan", "read_study", "run_study"]


@dataclass(frozen=True)
class Cell:
    """One evaluation of a study: a config on a model and a text, and whether it is stored."""

    model: str
    text: str
    config: str
    key: str
    stored: bool


def plan(study: Study, events: Events | None = None) -> list[Cell]:
    """Every evaluation of the study, model by model, and which ones the store already holds
    (finding the models and tokenizing the texts, loading no weights)."""
    events = events or LogEvents()
    cells = []
    with Store(study.store or runner.default_store()) as store:
        for spec in study.runs():
            ctx = runner.prepare(spec, events)
            for config in spec.configs:
                key = runner.result_key(
                    ctx.files.fingerprint, config, ctx.windows.fingerprint, ctx.settings_fp
                )
                cells.append(Cell(ctx.files.name, ctx.text_name, config.display, key,
                                  store.get(key) is not None))  # fmt: skip
    return cells


@dataclass
class StudyReport:
    """Every run of a study (one per model and text), and all their rows as one table."""

    name: str
    runs: list[RunReport]

    def to_dataframe(self) -> Any:
        """One row per model, text and config: model, text, status, then every metric."""
        import pandas as pd

        rows = [
            {"model": r.provenance.get("model"), "text": r.provenance.get("text"),
             "status": o.status.value, **(o.result.row() if o.result else {"config": o.config})}
            for r in self.runs
            for o in r.outcomes
        ]  # fmt: skip
        return pd.DataFrame(rows)

    @property
    def failed(self) -> bool:
        return any(o.status is Status.FAILED for r in self.runs for o in r.outcomes)


def run_study(study: Study, events: Events | None = None) -> StudyReport:
    """Measure every evaluation the store does not hold yet, run by run in this process (the
    local executor: the same numbers as ``quantscope run``); each is stored as it finishes."""
    events = events or LogEvents()
    return StudyReport(study.name, [runner.run(spec, events) for spec in study.runs()])
