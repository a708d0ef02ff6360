"""One self-contained HTML file with the whole picture of a run, from stored results only.

Plots are plotly figures with plotly.js inlined (the file loads nothing from the network);
every piece of model-generated or user-supplied text goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import json
from typing import Any

from quantscope.metrics.catalog import METRICS, TABLE, Better, metric
from quantscope.metrics.stats import pareto
from quantscope.results import Result, RunReport, depths_in, served_levels

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


def _star(name: str, x: Any, y: float) -> dict[str, Any]:
    """One point drawn as a large red star (the recommended config)."""
    marker = {
        "symbol": "star",
        "size": 18,
        "color": "#d62728",
        "line": {"width": 1, "color": "#222"},
    }
    return {
        "type": "scatter",
        "mode": "markers",
        "name": name,
        "x": [x],
        "y": [y],
        "marker": marker,
    }


def _scatter(
    results: list[Result], x: str, y: str, title: str, log_y: bool, chosen: str | None = None
) -> dict[str, Any]:
    """A plotly figure (as a dict): one point per config with y error bars, the Pareto front
    joined (each axis's better direction from the metric catalog), the recommended config
    marked. Axis titles are the metrics' labels in words, with units. On a log axis a value
    of zero (the baseline's own KL) is drawn at a floor a decade below the smallest positive
    value and labelled "= 0", so it is not lost."""
    mx, my = metric(x), metric(y)
    pts = [(r.metrics.get(x), r.metrics.get(y)) for r in results]
    keep = [i for i, (a, b) in enumerate(pts) if a is not None and b is not None]
    sx, sy = (-1.0 if m.better is Better.HIGHER else 1.0 for m in (mx, my))
    front = [keep[i] for i in pareto([(sx * pts[i][0], sy * pts[i][1]) for i in keep])]  # type: ignore[operator]
    front.sort(key=lambda i: pts[i][0])  # type: ignore[arg-type,return-value]
    ys = {i: float(pts[i][1]) for i in keep}  # type: ignore[arg-type]
    labels = {i: results[i].config for i in keep}
    if log_y:
        positive = [v for v in ys.values() if v > 0]
        floor = min(positive) / 10 if positive else 1e-6
        for i, v in ys.items():
            if v <= 0:
                ys[i], labels[i] = floor, f"{labels[i]} (= 0)"
    points = {
        "type": "scatter",
        "mode": "markers+text",
        "name": "configs",
        "x": [pts[i][0] for i in keep],
        "y": [ys[i] for i in keep],
        "text": [labels[i] for i in keep],
        "textposition": "top center",
        "error_y": {"type": "data", "array": [results[i].metrics.get(my.se, 0) for i in keep]}
        if my.se
        else None,
    }
    line = {
        "type": "scatter",
        "mode": "lines",
        "name": "Pareto front",
        "x": [pts[i][0] for i in front],
        "y": [ys[i] for i in front],
        "line": {"dash": "dot"},
    }
    data = [points, line]
    mark = [i for i in keep if results[i].config == chosen]
    if mark:
        data.append(_star(f"recommended: {chosen}", pts[mark[0]][0], ys[mark[0]]))
    layout = {
        # the title sits left and the (hover-only) toolbar right, above the plot: no overlap
        "title": {"text": title, "x": 0.02, "xanchor": "left"},
        "xaxis": {"title": {"text": mx.label}},
        "yaxis": {"title": {"text": my.label}, "type": "log" if log_y else "linear"},
        "margin": {"t": 70},
        "legend": {"orientation": "h", "y": -0.2},
    }
    return {"data": data, "layout": layout}


_HOW_TO_READ = (
    "Less memory, lower KL and perplexity and more tokens/s are better; the dotted line joins "
    "the Pareto front (the configs no other config beats on both axes); error bars are ± 1 se."
)
_QUANTILES = (("median", "kl_median"), ("p90", "kl_p90"), ("p99", "kl_p99"), ("max", "kl_max"))
_TASK_HEAD = ("task", "config", "acc %", "Δ pts", "flips ✓→✗ / ✗→✓", "McNemar p", "flipped items")


def _kl_distribution(results: list[Result]) -> dict[str, Any]:
    """Per config, the per-token KL's median, p90, p99 and max (log scale)."""
    traces = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": q,
            "x": [r.config for r in results],
            "y": [max(r.metrics.get(key) or 0.0, 1e-9) for r in results],
        }
        for q, key in _QUANTILES
    ]
    layout = {
        "title": {"text": "per-token KL distribution"},
        "yaxis": {"type": "log", "title": {"text": "per-token KL (nats)"}},
    }
    return {"data": traces, "layout": layout}


def _kl_by_position(results: list[Result]) -> dict[str, Any]:
    """Per config, mean KL ± se in each bucket of position within the window (log scale): does
    the error grow with the context the model has?"""
    traces = []
    for r in results:
        parts = r.by_position
        if parts and r.metrics.get("kl_mean", 0.0) > 0:  # the baseline (0) has no log point
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": r.config,
                    "x": list(parts),
                    "y": [m.get("kl_mean") for m in parts.values()],
                    "error_y": {
                        "type": "data",
                        "array": [m.get("kl_se", 0) for m in parts.values()],
                    },
                }
            )
    layout = {
        "title": {"text": "KL by position in the window", "x": 0.02, "xanchor": "left"},
        "xaxis": {"title": {"text": "tokens of context (position bucket)"}, "type": "category"},
        "yaxis": {"type": "log", "title": {"text": METRICS["kl_mean"].label}},
        "legend": {"orientation": "h", "y": -0.2},
    }
    return {"data": traces, "layout": layout}


def _memory_by_context(results: list[Result]) -> dict[str, Any]:
    """Per config measured at depth: weights + KV cache bytes against the tokens of context
    (solid), and the cache alone (dotted): where the cache, not the weights, is the cost."""
    traces = []
    for r in results:
        m, depths = r.metrics, depths_in(r.metrics)
        if not depths:
            continue
        cache = [m[f"kv_bytes@{d}"] / 2**20 for d in depths]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": r.config,
                "x": depths,
                "y": [m.get("weight_bytes", 0) / 2**20 + c for c in cache],
            }
        )
        dotted: dict[str, Any] = {"type": "scatter", "mode": "lines", "x": depths, "y": cache}
        dotted.update(name=f"{r.config} (cache)", line={"dash": "dot"})
        traces.append(dotted)
    layout = {
        "title": {"text": "memory vs context: weights + KV cache", "x": 0.02, "xanchor": "left"},
        "xaxis": {"title": {"text": "tokens of context (cached)"}},
        "yaxis": {"title": {"text": "MiB (dotted: the cache alone)"}},
        "legend": {"orientation": "h", "y": -0.2},
    }
    return {"data": traces, "layout": layout}


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


def run_figures(results: list[Result], chosen: str | None = None) -> dict[str, dict[str, Any]]:
    """A run's plots by name (the HTML report draws them all; a notebook asks for one), the
    ``chosen`` config marked on each Pareto plot."""
    figures = {
        "kl_vs_mb": _scatter(results, "weight_mb", "kl_mean", "KL vs weight MB", True, chosen),
        "ppl_vs_mb": _scatter(
            results, "weight_mb", "ppl", "perplexity vs weight MB", False, chosen
        ),
        "tps_vs_kl": _scatter(
            results, "kl_mean", "decode_tps", "decode tokens/s vs KL", False, chosen
        ),
        "kl_distribution": _kl_distribution(results),
    }
    for level in sorted({c for r in results for c in served_levels(r.metrics)}):
        key = f"serve_c{level}_out_tps"
        title = f"served: output tokens/s at concurrency {level} vs KL"
        figures[f"served_c{level}_vs_kl"] = _scatter(results, "kl_mean", key, title, False, chosen)
    if any(r.by_position for r in results):
        figures["kl_by_position"] = _kl_by_position(results)
    if any(depths_in(r.metrics) for r in results):
        figures["memory_vs_context"] = _memory_by_context(results)
    return figures


def render_html(report: RunReport, decision: str = "", chosen: str | None = None) -> str:
    """The report of a run as one self-contained HTML document; it opens with ``decision``
    (``report.decision.decision_html``) when given, ``chosen`` marked on the plots."""
    results = report.results
    figures = list(run_figures(results, chosen).values())
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
