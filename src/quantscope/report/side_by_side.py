"""Models side by side (a sweep: several models, the same configs): per config, each model's
KL, Δppl and task flips, and which model loses most under it — as a terminal table and as an
HTML page whose grouped bars are the claim "different models show varying sensitivity to
quantization", measured. From stored results only.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group

from quantscope.metrics.catalog import METRICS
from quantscope.report.fit import fitted
from quantscope.report.html import PLOTS, esc, page
from quantscope.results import Result, RunReport


def grid(reports: list[RunReport]) -> tuple[list[str], dict[str, dict[str, Result]]]:
    """The models (run order) and, per config (first-seen order), each model's result."""
    models = list(dict.fromkeys(str(r.provenance.get("model", r.run_id)) for r in reports))
    cells: dict[str, dict[str, Result]] = {}
    for report in reports:
        model = str(report.provenance.get("model", report.run_id))
        for outcome in report.outcomes:
            if outcome.result is not None:
                cells.setdefault(outcome.config, {})[model] = outcome.result
    return models, cells


def loses_most(by_model: dict[str, Result]) -> str:
    """The model whose KL to its own baseline is largest under a config."""
    measured = {
        m: r.metrics["kl_mean"]
        for m, r in by_model.items()
        if not math.isnan(r.metrics.get("kl_mean", math.nan))
    }
    return max(measured, key=measured.__getitem__) if measured else ""


def _cell(result: Result | None) -> str:
    if result is None:
        return "–"
    m = result.metrics
    text = (
        f"{METRICS['kl_mean'].cell(m, one_line=True)} ({METRICS['dppl_pct'].text(m['dppl_pct'])}%)"
    )
    flips = sum(t["correct_to_wrong"] + t["wrong_to_correct"] for t in result.tasks.values())
    return text + (f", {flips} flips" if result.tasks else "")


def models_table(reports: list[RunReport], width: int, title: str = "") -> Group:
    """Per config (rows) and model (columns): KL ± se (Δppl %), task flips; who loses most —
    in as many tables as ``width`` needs, names whole."""
    models, cells = grid(reports)
    rows = [
        {
            "config": config,
            **{model: _cell(by_model.get(model)) for model in models},
            "loses most": loses_most(by_model),
        }
        for config, by_model in cells.items()
    ]
    title = title or "models side by side: KL ± se (Δppl %)"
    return fitted(rows, ("config",), width, title, left=("loses most",))


def bars(models: list[str], cells: dict[str, dict[str, Result]]) -> dict[str, Any]:
    """KL per config, one bar per model, with ± 1 se (log axis; 0 shown at the axis floor)."""
    kl = METRICS["kl_mean"]
    traces = [
        {
            "type": "bar",
            "name": model,
            "x": list(cells),
            "y": [
                max(cells[c][model].metrics.get("kl_mean", math.nan), 1e-6)
                if model in cells[c] and not cells[c][model].invalid
                else None
                for c in cells
            ],
            "error_y": {
                "type": "data",
                "array": [
                    cells[c][model].metrics.get("kl_se", 0) if model in cells[c] else 0
                    for c in cells
                ],
            },
        }
        for model in models
    ]
    layout = {
        "title": {"text": "KL to each model's own baseline, per config"},
        "barmode": "group",
        "yaxis": {"type": "log", "title": {"text": kl.label}},
        "xaxis": {"title": {"text": "config"}},
        "margin": {"t": 60},
    }
    return {"data": traces, "layout": layout}


def models_html_table(reports: list[RunReport]) -> str:
    """Config rows, a column per model (KL ± se, Δppl %, flips), and which model loses most."""
    models, cells = grid(reports)
    head = "".join(f"<th>{esc(h)}</th>" for h in ("config", *models, "loses most"))
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{esc(c)}</td>"
            for c in (config, *(_cell(by_model.get(m)) for m in models), loses_most(by_model))
        )
        + "</tr>"
        for config, by_model in cells.items()
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def render_models_html(name: str, reports: list[RunReport]) -> str:
    """One HTML page: the models-side-by-side table and the grouped KL bars."""
    models, cells = grid(reports)
    body = (
        "<h2>Models side by side</h2><p>KL ± se to each model's own full-precision baseline, "
        f"(Δppl %), task flips; on each model's own windows of the same text.</p>{PLOTS}"
        f"{models_html_table(reports)}"
    )
    settings = {r.run_id: {"provenance": r.provenance, "settings": r.settings} for r in reports}
    return page(f"quantscope study · {name}", body, [bars(models, cells)], settings)
