"""One self-contained HTML file with the whole picture of a run, from stored results only.

Plots are plotly figures with plotly.js inlined (the file loads nothing from the network);
every piece of model-generated or user-supplied text goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import json
from typing import Any

from quantscope.metrics.catalog import TABLE
from quantscope.report.figures import run_figures
from quantscope.results import Result, RunReport

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
.gen td{text-align:left;vertical-align:top;white-space:pre-wrap;font-family:monospace}
.diff{background:#ffd7d7}
.plots{display:flex;flex-wrap:wrap;gap:1em}
.plot{width:560px;height:420px}
pre{background:#f6f6f6;padding:1em;overflow:auto}
.chosen{font-size:1.3em}.none{font-size:1.3em;color:#b00}.note{color:#8a5a00}
td.equivalent,td.non-inferior{background:#dff5df}td.worse{background:#ffd7d7}
td.not-resolved{background:#fff3c4}.small{font-size:12px;color:#555}
"""


PLOTS = "<!--plots-->"  # where page() puts the figures (escaped text cannot contain "<")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


_HOW_TO_READ = (
    "Less memory, lower KL and perplexity and more tokens/s are better; the dotted line joins "
    "the Pareto front (the configs no other config beats on both axes); error bars are ± 1 se."
)

_TASK_HEAD = ("task", "config", "acc %", "Δ pts", "flips ✓→✗ / ✗→✓", "McNemar p", "flipped items")


def results_table(report: RunReport) -> str:
    """One row per config: every table metric from the catalog (value ± se), then status."""
    head = ["config", *(m.header for m in TABLE), "status"]
    rows = []
    for o in report.outcomes:
        m = o.result.metrics if o.result else {}
        cells = [o.config, *(metric.cell(m, one_line=True) if m else "" for metric in TABLE)]
        why = o.result.invalid if o.result is not None else ""
        cells.append(f"{o.status.value} {o.reason}".strip() + (f"; INVALID: {why}" if why else ""))
        rows.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
    return f"<table>{header}{''.join(rows)}</table>"


def _generation_cell(gen: dict[str, Any], base: dict[str, Any] | None) -> str:
    """The generation's tokens, those that differ from the baseline's at their position marked."""
    tokens = gen.get("tokens") or [gen.get("text", "")]
    base_ids = base.get("ids", []) if base else gen.get("ids", [])
    ids = gen.get("ids", [])
    parts = []
    for i, token in enumerate(tokens):
        same = i < len(ids) and i < len(base_ids) and ids[i] == base_ids[i]
        parts.append(
            esc(token)
            if same or not gen.get("tokens")
            else f'<span class="diff">{esc(token)}</span>'
        )
    return "".join(parts)


def generations_table(results: list[Result]) -> str:
    if not results or not results[0].generations:
        return "<p>No generations.</p>"
    base = results[0]
    blocks = []
    for i, first in enumerate(base.generations):
        rows = []
        for r in results:
            gen = r.generations[i]
            diff = gen.get("first_diff")
            where = "same as baseline" if diff is None else f"first differs at token {diff}"
            rows.append(
                f"<tr><td>{esc(r.config)}<br><small>{esc(where)}</small></td>"
                f"<td>{_generation_cell(gen, base.generations[i])}</td></tr>"
            )
        blocks.append(
            f"<h3>Prompt: {esc(first['prompt'])}</h3><table class='gen'>{''.join(rows)}</table>"
        )
    return "".join(blocks)


def _tasks(results: list[Result]) -> str:
    rows = []
    for r in results:
        for name, t in r.tasks.items():
            flipped = "; ".join(esc(v) for v in list(t.get("flipped_examples", {}).values())[:3])
            rows.append(
                f"<tr><td>{esc(name)}</td><td>{esc(r.config)}</td>"
                f"<td>{100 * t['accuracy']:.1f} ± {100 * t['accuracy_se']:.1f}</td>"
                f"<td>{100 * t['delta']:+.1f}</td><td>{t['correct_to_wrong']} / "
                f"{t['wrong_to_correct']} ({t['flipped_pct']:.1f}%)</td>"
                f"<td>{t['mcnemar_p']:.3g}</td><td style='text-align:left'>{flipped}</td></tr>"
            )
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in _TASK_HEAD)
    return f"<h2>Tasks</h2><table><tr>{head}</tr>{''.join(rows)}</table>"


def render_html(
    report: RunReport,
    decision: str = "",
    chosen: str | None = None,
    spread: dict[str, dict[str, float]] | None = None,
) -> str:
    """The report of a run as one self-contained HTML document; it opens with ``decision``
    (``report.decision.decision_html``) when given, ``chosen`` marked on the plots, each
    config's per-token KL drawn as a box from ``spread``."""
    results = report.results
    figures = list(run_figures(results, chosen, spread).values())
    settings = {"settings": report.settings, "provenance": report.provenance}
    title = f"quantscope · {report.provenance.get('model', '')} · run {report.run_id}"
    body = (
        f"{decision}<h2>Results</h2>{results_table(report)}"
        f"<h2>Tradeoffs</h2><p>{_HOW_TO_READ}</p>{PLOTS}{_tasks(results)}"
        f"<h2>Generations (greedy; differing tokens marked)</h2>{generations_table(results)}"
    )
    return page(title, body, figures, settings)


def page(title: str, body: str, figures: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """A self-contained HTML document: ``body`` (already escaped HTML) with :data:`PLOTS` where
    the plotly ``figures`` go (plotly.js inlined once, by ``plotly.io.to_html``), then the
    settings as JSON."""
    import plotly.io as pio

    options = {"full_html": False, "validate": False, "config": _PLOT_CONFIG}
    plots = [
        pio.to_html(f, include_plotlyjs=i == 0, div_id=f"plot{i}", **options)
        for i, f in enumerate(figures)
    ]
    divs = "".join(f'<div class="plot">{p}</div>' for p in plots)
    text = json.dumps(settings, indent=2, default=str)
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>{body.replace(PLOTS, f'<div class=plots>{divs}</div>')}"
        f"<h2>Settings, versions, hardware</h2><pre>{esc(text)}</pre></body></html>"
    )


_PLOT_CONFIG = {"displaylogo": False, "displayModeBar": "hover"}
