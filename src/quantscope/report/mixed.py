"""Sensitivity and search results as terminal tables and one HTML page (heatmap, front).

Everything here reads the plain dicts a study or search stores; nothing runs a model.
"""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table
from rich.text import Text

from quantscope.report.html import PLOTS, esc, page
from quantscope.results import SensitivityStudy


def _g(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}"


def _pm(row: dict[str, Any], key: str) -> str:
    if key not in row:
        return "–"
    return f"{_g(row[key])} ± {_g(row.get(key + '_se'), 2)}"


def sensitivity_table(study: dict[str, Any], top: int = 15) -> Table:
    """The ``top`` most sensitive units: KL with only the unit quantized, KL with all but the
    unit quantized (and the KL that saves), Δppl, and the MB it costs to keep the unit."""
    s = study["settings"]
    table = Table(
        title=f"Sensitivity to {s['config']} (rest {s['fallback']}), by {s['by']}; "
        f"calibration: {s['calibration_tokens']} tokens of {s['calibration_text']}",
        title_justify="left",
    )
    columns = (
        "#",
        "unit",
        "KL only it",
        "Δppl % only it",
        "KL all but it",
        "KL saved",
        "MB to keep",
    )
    for header in columns:
        table.add_column(header, justify="left" if header == "unit" else "right")
    table.columns[1].no_wrap = True
    for i, row in enumerate(ranking(study)[:top], start=1):
        table.add_row(
            str(i),
            Text(_short(row["unit"])),
            _g(row.get("only_kl")),
            _g(row.get("only_dppl_pct")),
            _g(row.get("all_but_kl")),
            _g(row.get("gain")),
            f"{row['mb_to_keep']:.2f}",
        )
    return table


def _short(name: str) -> str:
    """A unit name without the leading ``model.`` every decoder layer shares."""
    return name.removeprefix("model.")


def ranking(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The stored study's ranking (as ``mixed.SensitivityStudy.ranking`` computes it)."""
    return SensitivityStudy.from_dict(study).ranking()


def totals_line(study: dict[str, Any]) -> str:
    """KL and estimated MB with every unit quantized, and with none."""
    rows = {(r["unit"], r["mode"]): r for r in study["rows"]}
    s = study["settings"]
    every, none = rows[("*", "all")], rows[("*", "none")]
    return (
        f"All units quantized: KL {_g(every['kl'])} ± {_g(every['kl_se'], 2)}, "
        f"≈{s['estimated_mb_all_quantized']:.1f} MB; none: KL {_g(none['kl'])}, "
        f"≈{s['estimated_mb_none_quantized']:.1f} MB. {s['seconds_per_measurement']:.2f} s per "
        f"unit and mode on {s['calibration_tokens']} calibration tokens in "
        f"{s['calibration_windows']} windows "
        f"(emulation: {s['emulation']})."
    )


def heatmap(study: dict[str, Any], mode: str = "only") -> dict[str, Any] | None:
    """A plotly heatmap (as a dict) of layers × kinds, or None when units have no layer."""
    layers, kinds, values = SensitivityStudy.from_dict(study).matrix(mode)
    if not layers:
        return None
    z = [[None if math.isnan(v) else v for v in row] for row in values]
    data = [
        {
            "type": "heatmap",
            "x": kinds,
            "y": layers,
            "z": z,
            "colorscale": "Reds",
            "colorbar": {"title": {"text": "KL"}},
        }
    ]
    what = "only this unit quantized" if mode == "only" else "all but this unit quantized"
    layout = {"title": {"text": f"calibration KL, {what}"}, "yaxis": {"title": {"text": "layer"}}}
    return {"data": data, "layout": layout}


def front_table(result: dict[str, Any]) -> Table:
    """The measured candidates on the Pareto front (estimated MB vs calibration KL) and every
    verified config (measured on the evaluation text); with KV-cache choices, each row's
    cache and MB as weights + cache at the evaluation context."""
    caches = any(r.get("kv") for r in result["front"])
    table = Table(title="Search: Pareto front on calibration, then verified", title_justify="left")
    heads = (
        "units kept",
        *(("KV cache", "est. MB (w + cache)") if caches else ("est. MB",)),
        "calib KL ± se",
        "calib Δppl %",
        "verified MB",
        "verified KL ± se",
        "verified Δppl %",
    )
    for header in heads:
        table.add_column(header, justify="right")

    def first(row: dict[str, Any]) -> list[str]:
        mb = row.get("total_mb", row["estimated_mb"]) if caches else row["estimated_mb"]
        return [str(row["kept"]), *([row.get("kv", "")] if caches else []), f"{mb:.1f}"]

    def size(v: dict[str, Any]) -> str:
        return _g(v.get("total_mb" if caches else "weight_mb"), 4)

    verified = {(v["kept"], v.get("kv", "")): v for v in result["verified"]}
    for row in result["front"]:
        v = verified.get((row["kept"], row.get("kv", "")), {})
        table.add_row(
            *first(row),
            _pm(row, "kl"),
            _g(row["dppl_pct"]),
            size(v) if v else "",
            _pm(v, "kl") if v else "",
            _g(v.get("dppl_pct")),
        )
    for (kept, kv), v in verified.items():
        if not any(r["kept"] == kept and r.get("kv", "") == kv for r in result["front"]):
            table.add_row(
                *first(v),
                _g(v["calibration_kl"]),
                "",
                size(v),
                _pm(v, "kl"),
                _g(v.get("dppl_pct")),
            )
    return table


def comparison_table(result: dict[str, Any]) -> Table | None:
    """The chosen (or closest verified) config beside the pure quantized and fallback configs."""
    best = result["chosen"] or next(iter(result["verified"][-1:]), None)
    if not best or "others" not in best:
        return None
    table = Table(title="On the evaluation text", title_justify="left")
    for header in ("config", "weights MB", "KL ± se", "Δppl % ± se"):
        table.add_column(header, justify="left" if header == "config" else "right")
    rows = [*best["others"].items(), (best["label"], best)]
    for name, m in rows:
        kl = m.get("kl_mean", m.get("kl"))
        table.add_row(
            Text(name),
            _g(m["weight_mb"], 4),
            f"{_g(kl)} ± {_g(m['kl_se'], 2)}",
            f"{_g(m['dppl_pct'])} ± {_g(m['dppl_pct_se'], 2)}",
        )
    return table


def render_study_html(study: dict[str, Any], search: dict[str, Any] | None = None) -> str:
    """One HTML page: the ranked units, the heatmaps and (after a search) its front."""
    rows = ranking(study)
    head = ("unit", "KL only it", "Δppl % only it", "KL all but it", "KL saved", "MB to keep")
    cells = "".join(
        "<tr>"
        + "".join(
            f"<td>{esc(c)}</td>"
            for c in (
                r["unit"],
                _pm(r, "only_kl"),
                _pm(r, "only_dppl_pct"),
                _pm(r, "all_but_kl"),
                _g(r.get("gain")),
                f"{r['mb_to_keep']:.2f}",
            )
        )
        + "</tr>"
        for r in rows
    )
    table = "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{cells}</table>"
    figures = [f for f in (heatmap(study, "only"), heatmap(study, "all-but")) if f]
    if search:
        figures.append(front_figure(search))
    body = f"<p>{esc(totals_line(study))}</p>{PLOTS}<h2>Units, most sensitive first</h2>{table}"
    title = f"quantscope sensitivity · {study['settings']['model']} · {study['settings']['config']}"
    return page(
        title, body, figures, {"study": study["settings"], "search": search and search["settings"]}
    )


def front_figure(search: dict[str, Any]) -> dict[str, Any]:
    points, front, verified = search["candidates"], search["front"], search["verified"]
    data = [
        {
            "type": "scatter",
            "mode": "markers",
            "name": "measured (calibration)",
            "x": [p["estimated_mb"] for p in points],
            "y": [p["kl"] for p in points],
            "text": [f"{p['kept']} kept" for p in points],
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "Pareto front",
            "line": {"dash": "dot"},
            "x": [p["estimated_mb"] for p in front],
            "y": [p["kl"] for p in front],
        },
        {
            "type": "scatter",
            "mode": "markers",
            "name": "verified (evaluation)",
            "marker": {"symbol": "star", "size": 12},
            "x": [v["weight_mb"] for v in verified],
            "y": [v["kl"] for v in verified],
        },
    ]
    layout = {
        "title": {"text": "KL vs weight MB"},
        "xaxis": {"title": {"text": "MB"}},
        "yaxis": {"title": {"text": "KL"}, "type": "log"},
    }
    return {"data": data, "layout": layout}


def recovery_table(result: dict[str, Any]) -> Table:
    """Baseline, plain quantized and recovered configs, and the share of each gap closed."""
    table = Table(title="LoRA recovery on the evaluation text", title_justify="left")
    for header in ("config", "weights MB", "ppl ± se", "Δppl % ± se", "KL ± se"):
        table.add_column(header, justify="left" if header == "config" else "right")
    table.columns[0].no_wrap = True
    for name, m in result["configs"].items():
        table.add_row(
            Text(name),
            _g(m["weight_mb"], 4),
            f"{_g(m['ppl'], 4)} ± {_g(m['ppl_se'], 2)}",
            f"{_g(m['dppl_pct'])} ± {_g(m['dppl_pct_se'], 2)}",
            f"{_g(m['kl_mean'])} ± {_g(m['kl_se'], 2)}",
        )
    kl, kl_se = result["kl_recovery"]
    ppl, ppl_se = result["ppl_recovery"]
    table.caption = (
        f"recovered: {100 * kl:.1f} ± {100 * kl_se:.1f} % of the KL gap, "
        f"{100 * ppl:.1f} ± {100 * ppl_se:.1f} % of the log-perplexity gap (se conservative)"
    )
    return table
