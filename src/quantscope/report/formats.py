"""Runs as rows, rendered as a terminal table, Markdown, CSV or JSON (from stored results).

>>> print(render([{"config": "bf16", "kl_mean": 0.00122}], "csv").strip())
config,kl_mean
bf16,0.00122
"""

from __future__ import annotations

import csv
import io
import json
import math
from enum import Enum
from typing import Any

from quantscope.metrics.catalog import HEADLINE, METRICS, served_keys, summary_keys
from quantscope.results import RunReport, served_levels

SUMMARY = summary_keys()


class Format(str, Enum):
    TABLE = "table"
    MD = "md"
    CSV = "csv"
    JSON = "json"


def run_rows(report: RunReport, columns: tuple[str, ...] = SUMMARY) -> list[dict[str, Any]]:
    """One row per config of a run: config, status, then the summary metrics (and, when any
    config was served by an engine, its load test at each concurrency level)."""
    rows = []
    levels = sorted({c for r in report.results for c in served_levels(r.metrics)})
    if levels and columns == SUMMARY:
        columns = (*columns, *served_keys(levels))
    for outcome in report.outcomes:
        metrics = outcome.result.metrics if outcome.result else {}
        row: dict[str, Any] = {"config": outcome.config, "status": outcome.status.value}
        row.update({c: metrics.get(c) for c in columns})
        rows.append(row)
    return rows


def compare_rows(a: RunReport, b: RunReport) -> list[dict[str, Any]]:
    """Configs of two runs side by side: each metric in A, in B, and B − A.

    Configs are matched by name; a config in only one run has blanks for the other.
    """
    rows_a = {r["config"]: r for r in run_rows(a)}
    rows_b = {r["config"]: r for r in run_rows(b)}
    out = []
    for config in list(rows_a) + [c for c in rows_b if c not in rows_a]:
        ra, rb = rows_a.get(config, {}), rows_b.get(config, {})
        row: dict[str, Any] = {"config": config}
        for key in HEADLINE:
            va, vb = ra.get(key), rb.get(key)
            row[f"{key}_a"], row[f"{key}_b"] = va, vb
            row[f"{key}_diff"] = vb - va if va is not None and vb is not None else None
        out.append(row)
    return out


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render(rows: list[dict[str, Any]], fmt: str) -> str:
    """Rows as Markdown, CSV or JSON text (the table format is drawn by :func:`rich_table`)."""
    columns = list(rows[0]) if rows else []
    if fmt == Format.JSON.value:
        return json.dumps(rows, indent=2, default=str)
    if fmt == Format.CSV.value:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
        return buffer.getvalue()
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:  # Markdown: escape the cell separator
        lines.append("| " + " | ".join(_cell(row[c]).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines)


def compare_cells(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """:func:`compare_rows` for the terminal: per config and headline metric "A → B", each
    value as the results table shows it."""
    out = []
    for row in rows:
        cells = {"config": str(row["config"])}
        for key in HEADLINE:
            metric = METRICS[key]
            cells[metric.short] = f"{metric.text(row[f'{key}_a'])} → {metric.text(row[f'{key}_b'])}"
        out.append(cells)
    return out


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) and not math.isnan(value) else _cell(value)


def rich_table(
    rows: list[dict[str, Any]], title: str, width: int, prose: tuple[str, ...] = ()
) -> Any:
    """Rows as rich tables that fit ``width`` (every cell plain text, never markup, never
    cut; the first column, a name or id a reader copies, repeated in each; only ``prose``
    columns wrap, at their spaces)."""
    from quantscope.report.fit import fitted

    cells = [{k.replace("_", " "): _shown(v) for k, v in row.items()} for row in rows]
    keys = tuple(cells[0])[:1] if cells else ()
    return fitted(cells, keys, width, title, left=prose, prose=prose)
