"""Results in a notebook: an HTML table for each kind of result (``_repr_html_``), its plots
as plotly figures (``.plot(NAME)``), and a run's generations with the differing tokens marked.

Each kind of result (``RunReport``, ``SensitivityStudy``, ``SearchResult``, ``Recovery``,
``SweepReport``) gets its :class:`~quantscope.results.View` registered here, by type; the
result classes are data and never import this module (``quantscope`` imports it). Every
piece of text from a model or a user is escaped.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from rich.console import Console

from quantscope.mixed.search import SearchResult
from quantscope.recovery import Recovery
from quantscope.report.figures import run_figures
from quantscope.report.html import esc, generations_table, results_table
from quantscope.report.mixed import (
    comparison_table,
    front_figure,
    front_table,
    heatmap,
    recovery_table,
    sensitivity_table,
    totals_line,
)
from quantscope.report.side_by_side import bars, grid, models_html_table
from quantscope.results import RunReport, SensitivityStudy, View, register_view
from quantscope.sweeps import SweepReport

_STYLE = (
    "<style>.quantscope table{border-collapse:collapse;font-size:13px}"
    ".quantscope td,.quantscope th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
    ".quantscope td:first-child,.quantscope th:first-child{text-align:left}"
    ".quantscope .gen td{text-align:left;vertical-align:top;white-space:pre-wrap;"
    "font-family:monospace}.quantscope .diff{background:#ffd7d7}</style>"
)
Figure = dict[str, Any]


class Html:
    """HTML that Jupyter renders (and ``str()`` gives)."""

    def __init__(self, body: str) -> None:
        self.body = body

    def _repr_html_(self) -> str:
        return self.body

    def __str__(self) -> str:
        return self.body


def wrap(body: str) -> str:
    return f'<div class="quantscope">{_STYLE}{body}</div>'


def rich_html(*renderables: Any) -> str:
    """Rich tables as HTML (the terminal's tables, for the views that have no HTML table)."""
    console = Console(record=True, file=io.StringIO(), width=140, force_jupyter=False)
    for r in renderables:
        if r is not None:
            console.print(r)
    return console.export_html(
        inline_styles=True, code_format="<pre style='font-size:12px;line-height:1.3'>{code}</pre>"
    )


def _run_html(report: RunReport) -> str:
    p, s = report.provenance, report.settings
    head = (
        f"<p><b>quantscope</b> · {esc(p.get('model', ''))} · run {esc(report.run_id)} · "
        f"{esc(s.get('tokens_scored', ''))} tokens of {esc(p.get('text', ''))} · "
        f"context {esc(s.get('context', ''))} · ± is one standard error</p>"
    )
    notes = "".join(
        f"<li>{esc(o.config)}: {esc(o.status.value)} — {esc(o.reason)}</li>"
        for o in report.outcomes
        if o.reason
    )
    return head + results_table(report) + (f"<ul>{notes}</ul>" if notes else "")


def _study_html(study: SensitivityStudy) -> str:
    body = study.to_dict()
    return rich_html(sensitivity_table(body), totals_line(body))


def _study_plots(study: SensitivityStudy) -> dict[str, Figure | None]:
    body = study.to_dict()
    return {"heatmap_only": heatmap(body, "only"), "heatmap_all_but": heatmap(body, "all-but")}


def _search_html(result: SearchResult) -> str:
    body = result.to_dict()
    return rich_html(front_table(body), comparison_table(body), body["message"])


def _sweep_html(report: SweepReport) -> str:
    return f"<p><b>quantscope sweep</b> · {esc(report.name)}</p>" + models_html_table(report.runs)


def generations(report: RunReport) -> Html:
    """The run's greedy generations, each config's beside the baseline's, the tokens that
    differ from the baseline's marked."""
    return Html(wrap(generations_table(report.results)))


def _wrapped(html: Callable[[Any], str]) -> Callable[[Any], str]:
    return lambda result: wrap(html(result))


register_view(
    RunReport,
    View(_wrapped(_run_html), lambda report: run_figures(report.results), generations),
)
register_view(SensitivityStudy, View(_wrapped(_study_html), _study_plots))
register_view(
    SearchResult,
    View(_wrapped(_search_html), lambda result: {"front": front_figure(result.to_dict())}),
)
register_view(
    Recovery, View(_wrapped(lambda r: rich_html(recovery_table(r.to_dict()))), lambda _: {})
)
register_view(
    SweepReport, View(_wrapped(_sweep_html), lambda r: {"kl_by_model": bars(*grid(r.runs))})
)
