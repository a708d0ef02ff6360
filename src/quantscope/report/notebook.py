"""Results in a notebook: an HTML table for each kind of result (``_repr_html_``), its plots
as plotly figures (``.plot(NAME)``), and a run's generations with the differing tokens marked.

The result classes (``RunReport``, a sensitivity ``Study``, ``SearchResult``, ``Recovery``,
``StudyReport``) inherit :class:`~quantscope.results.Display`, which imports this module when
a notebook asks for a view (display only: the data classes never need the report part to
exist). Every piece of text from a model or a user is escaped.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from quantscope.config.base import did_you_mean
from quantscope.errors import UserError
from quantscope.report.html import _generations, _results_table, esc, run_figures
from quantscope.results import RunReport

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
    from rich.console import Console

    console = Console(record=True, file=io.StringIO(), width=140, force_jupyter=False)
    for r in renderables:
        if r is not None:
            console.print(r)
    return console.export_html(
        inline_styles=True, code_format="<pre style='font-size:12px;line-height:1.3'>{code}</pre>"
    )


def _run_html(report: Any) -> str:
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
    return head + _results_table(report) + (f"<ul>{notes}</ul>" if notes else "")


def _study_html(study: Any) -> str:
    from quantscope.report.mixed import sensitivity_table, totals_line

    body = study.to_dict()
    return rich_html(sensitivity_table(body), totals_line(body))


def _study_plots(study: Any) -> dict[str, Figure | None]:
    from quantscope.report.mixed import heatmap

    body = study.to_dict()
    return {"heatmap_only": heatmap(body, "only"), "heatmap_all_but": heatmap(body, "all-but")}


def _search_html(result: Any) -> str:
    from quantscope.report.mixed import comparison_table, front_table

    body = result.to_dict()
    return rich_html(front_table(body), comparison_table(body), body["message"])


def _search_plots(result: Any) -> dict[str, Figure | None]:
    from quantscope.report.mixed import _front_figure

    return {"front": _front_figure(result.to_dict())}


def _recovery_html(recovery: Any) -> str:
    from quantscope.report.mixed import recovery_table

    return rich_html(recovery_table(recovery.to_dict()))


def _sweep_html(report: Any) -> str:
    from quantscope.report.models import models_html_table

    return f"<p><b>quantscope study</b> · {esc(report.name)}</p>" + models_html_table(report.runs)


def _sweep_plots(report: Any) -> dict[str, Figure | None]:
    from quantscope.report.models import _bars, grid

    return {"kl_by_model": _bars(*grid(report.runs))}


_VIEWS: dict[str, tuple[Callable[[Any], str], Callable[[Any], dict[str, Any]]]] = {
    "RunReport": (_run_html, lambda report: run_figures(report.results)),
    "Study": (_study_html, _study_plots),
    "SearchResult": (_search_html, _search_plots),
    "Recovery": (_recovery_html, lambda _: {}),
    "StudyReport": (_sweep_html, _sweep_plots),
}


def html(result: Any) -> str:
    """The result as an HTML fragment for Jupyter."""
    return wrap(_VIEWS[type(result).__name__][0](result))


def plot_names(result: Any) -> list[str]:
    return list(_VIEWS[type(result).__name__][1](result))


def plot(result: Any, name: str | None = None) -> Any:
    """One of the result's plots as a plotly figure (the first when ``name`` is None)."""
    import plotly.graph_objects as go

    plots = _VIEWS[type(result).__name__][1](result)
    if not plots:
        raise UserError(f"A {type(result).__name__} has no plots; show it as a table instead.")
    name = name or next(iter(plots))
    if name not in plots:
        raise UserError(
            f"No plot '{name}' for a {type(result).__name__}.{did_you_mean(name, list(plots))} "
            f"Plots: {', '.join(plots)}."
        )
    body = plots[name]
    if body is None:
        raise UserError(f"Plot '{name}' has nothing to draw in this result.")
    return go.Figure(body)


def generations(report: RunReport) -> Html:
    """The run's greedy generations, each config's beside the baseline's, the tokens that
    differ from the baseline's marked."""
    return Html(wrap(_generations(report.results)))
