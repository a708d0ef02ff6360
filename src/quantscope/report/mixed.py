"""Sensitivity and search results as terminal tables and one HTML page (heatmap, front).

Everything here reads the plain dicts a study or search stores; nothing runs a model.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group

from quantscope.report.fit import fitted
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


def sensitivity_table(study: dict[str, Any], top: int = 15, width: int = 140) -> Group:
    """The ``top`` most sensitive units: KL with only the unit quantized, KL with all but the
    unit quantized (and the KL that saves), Δppl, and the MB it costs to keep the unit."""
    s = study["settings"]
    title = (
        f"Sensitivity to {s['config']} (rest {s['fallback']}), by {s['by']}; "
        f"calibration: {s['calibration_tokens']} tokens of {s['calibration_text']}"
    )
    rows = [
        {
            "#": str(i),
            "unit": _short(row["unit"]),
            "KL only it": _g(row.get("only_kl")),
            "Δppl % only it": _g(row.get("only_dppl_pct")),
            "KL all but it": _g(row.get("all_but_kl")),
            "KL saved": _g(row.get("gain")),
            "MB to keep": f"{row['mb_to_keep']:.2f}",
        }
        for i, row in enumerate(ranking(study)[:top], start=1)
    ]
    return fitted(rows, ("#", "unit"), width, title, left=("unit",))


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


def front_table(result: dict[str, Any], width: int = 140) -> Group:
    """The measured candidates on the Pareto front (estimated MB vs calibration KL) and every
    verified config (measured on the evaluation text); with KV-cache choices, each row's
    cache and MB as weights + cache at the evaluation context."""
    caches = any(r.get("kv") for r in result["front"])

    def first(row: dict[str, Any]) -> dict[str, str]:
        mb = row.get("total_mb", row["estimated_mb"]) if caches else row["estimated_mb"]
        kv = {"KV cache": str(row.get("kv", ""))} if caches else {}
        return {"units kept": str(row["kept"]), **kv,
                "est. MB (w + cache)" if caches else "est. MB": f"{mb:.1f}"}  # fmt: skip

    def checked(v: dict[str, Any]) -> dict[str, str]:
        return {
            "verified MB": _g(v.get("total_mb" if caches else "weight_mb"), 4) if v else "",
            "verified KL ± se": _pm(v, "kl") if v else "",
            "verified Δppl %": _g(v.get("dppl_pct")),
        }

    verified = {(v["kept"], v.get("kv", "")): v for v in result["verified"]}
    rows = [
        {
            **first(row),
            "calib KL ± se": _pm(row, "kl"),
            "calib Δppl %": _g(row["dppl_pct"]),
            **checked(verified.get((row["kept"], row.get("kv", "")), {})),
        }
        for row in result["front"]
    ]
    rows += [
        {**first(v), "calib KL ± se": _g(v["calibration_kl"]), "calib Δppl %": "", **checked(v)}
        for (kept, kv), v in verified.items()
        if not any(r["kept"] == kept and r.get("kv", "") == kv for r in result["front"])
    ]
    keys = ("units kept", "KV cache") if caches else ("units kept",)
    title = "Search: Pareto front on calibration, then verified"
    return fitted(rows, keys, width, title, left=("KV cache",))


def comparison_table(result: dict[str, Any], width: int = 140) -> Group | None:
    """The chosen (or closest verified) config beside the pure quantized and fallback configs."""
    best = result["chosen"] or next(iter(result["verified"][-1:]), None)
    if not best or "others" not in best:
        return None
    rows = [
        {
            "config": name,
            "weights MB": _g(m["weight_mb"], 4),
            "KL ± se": f"{_g(m.get('kl_mean', m.get('kl')))} ± {_g(m['kl_se'], 2)}",
            "Δppl % ± se": f"{_g(m['dppl_pct'])} ± {_g(m['dppl_pct_se'], 2)}",
        }
        for name, m in [*best["others"].items(), (best["label"], best)]
    ]
    return fitted(rows, ("config",), width, "On the evaluation text")


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


def recovery_table(result: dict[str, Any], width: int = 140) -> Group:
    """Baseline, plain quantized and recovered configs, and the share of each gap closed."""
    rows = [
        {
            "config": name,
            "weights MB": _g(m["weight_mb"], 4),
            "ppl ± se": f"{_g(m['ppl'], 4)} ± {_g(m['ppl_se'], 2)}",
            "Δppl % ± se": f"{_g(m['dppl_pct'])} ± {_g(m['dppl_pct_se'], 2)}",
            "KL ± se": f"{_g(m['kl_mean'])} ± {_g(m['kl_se'], 2)}",
        }
        for name, m in result["configs"].items()
    ]
    kl, kl_se = result["kl_recovery"]
    ppl, ppl_se = result["ppl_recovery"]
    note = (
        f"recovered: {100 * kl:.1f} ± {100 * kl_se:.1f} % of the KL gap, "
        f"{100 * ppl:.1f} ± {100 * ppl_se:.1f} % of the log-perplexity gap (se conservative)"
    )
    return fitted(rows, ("config",), width, "LoRA recovery on the evaluation text", [note])
