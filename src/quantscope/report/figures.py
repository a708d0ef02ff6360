"""A run's plots, as plotly figures (plain dicts): accuracy against memory and speed with the
Pareto front, the per-token KL per config, KL by position, memory by context, and the
served throughput against KL. The HTML report draws them all; a notebook asks for one.
"""

from __future__ import annotations

import math
from typing import Any

from quantscope.metrics.catalog import METRICS, Better, metric
from quantscope.metrics.stats import pareto
from quantscope.results import Result, depths_in, estimable_buckets, served_levels


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


_CHAR, _LINE = 0.0145, 0.055  # a label's char width and height, the plot being 1 × 1
_PLOT_PX = (480, 300)  # the plot area of a report's figure, in pixels (its div: 560 × 420)
_DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, 1), (1, -1), (-1, -1))

Box = tuple[float, float, float, float]


def _box(x: float, y: float, width: float, offset: tuple[float, float]) -> Box:
    """The box (x0, y0, x1, y1) of a label of ``width`` centred at (x, y) + ``offset``."""
    cx, cy = x + offset[0], y + offset[1]
    return cx - width / 2, cy - _LINE / 2, cx + width / 2, cy + _LINE / 2


def _overlap(a: Box, b: Box) -> float:
    return max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)


def label_places(xs: list[float], ys: list[float], labels: list[str]) -> list[tuple[float, float]]:
    """Where each point's label goes, as its centre's offset from the point (the plot being
    1 × 1; ``xs``/``ys`` as drawn, scaled to 0..1), so that labels cover neither each other
    nor the points nor leave the plot: the nearest free place on rings around the point, in
    eight directions each (the report draws a thin line from a label to its point).

    >>> label_places([0.5, 0.51], [0.5, 0.5], ["bnb-int8", "torchao-int8wo"])
    [(0.0, 0.0675), (0.0, -0.0675)]
    """
    placed: list[Box] = [
        (x - 0.01, y - 0.01, x + 0.01, y + 0.01) for x, y in zip(xs, ys, strict=True)
    ]
    out = []
    for x, y, label in zip(xs, ys, labels, strict=True):
        width = _CHAR * len(label)
        best, cost = (0.0, _LINE), math.inf
        for ring in (0.04, 0.1, 0.16, 0.24, 0.32):
            for kx, ky in _DIRECTIONS:
                offset = (kx * (ring + width / 2), ky * (ring + _LINE / 2))
                box = _box(x, y, width, offset)
                outside = max(0.0, -box[0]) + max(0.0, box[2] - 1.15) + max(0.0, box[3] - 1.1)
                here = sum(_overlap(box, other) for other in placed) + outside
                if here < cost:
                    best, cost = offset, here
            if cost == 0:
                break
        out.append((round(best[0], 4), round(best[1], 4)))
        placed.append(_box(x, y, width, best))
    return out


def _labels(xs: list[float], ys: list[float], labels: list[str], log_y: bool) -> list[dict]:
    """Plotly annotations: each label at its place, a thin line to its point."""
    scaled = label_places(_scaled(xs, False), _scaled(ys, log_y), labels)
    return [
        {
            "x": x,
            "y": math.log10(y) if log_y else y,  # plotly places annotations in log10 units
            "text": label,
            "ax": dx * _PLOT_PX[0],
            "ay": -dy * _PLOT_PX[1],
            "showarrow": True,
            "arrowhead": 0,
            "arrowwidth": 1,
            "arrowcolor": "#999",
            "standoff": 4,
            "xanchor": "center",
            "yanchor": "middle",
            "font": {"size": 11},
        }
        for x, y, label, (dx, dy) in zip(xs, ys, labels, scaled, strict=True)
    ]


def _scaled(values: list[float], log: bool) -> list[float]:
    """Values as drawn on an axis, scaled to 0..1."""
    drawn = [math.log10(v) if log else v for v in values]
    low, high = min(drawn), max(drawn)
    return [(v - low) / (high - low) if high > low else 0.5 for v in drawn]


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
        "mode": "markers",
        "name": "configs",
        "x": [pts[i][0] for i in keep],
        "y": [ys[i] for i in keep],
        "text": [labels[i] for i in keep],  # on hover; the labels are annotations
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
        "annotations": _labels(
            [float(pts[i][0]) for i in keep],  # type: ignore[arg-type]
            [ys[i] for i in keep],
            [labels[i] for i in keep],
            log_y,
        )
        if keep
        else [],
    }
    return {"data": data, "layout": layout}


def kl_distribution(results: list[Result], spread: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per config, a box of its per-token KL (quartiles, whiskers at the 5th and 95th
    percentile, the mean dashed) with its p99 and max as points, on a log axis; from the
    stored quantiles alone (median, p90, p99, max) as points where the per-token values are
    not at hand. A config whose KL is 0 everywhere (the baseline) has nothing to draw."""
    shown = [r for r in results if (r.metrics.get("kl_max") or 0) > 0]
    boxed = [r.config for r in shown if r.config in spread]
    box = {"type": "box", "name": "quartiles, 5–95%", "x": boxed, "boxmean": True}
    for field, key in (
        ("q1", "q1"),
        ("median", "median"),
        ("q3", "q3"),
        ("mean", "mean"),
        ("lowerfence", "p5"),
        ("upperfence", "p95"),
    ):
        box[field] = [max(spread[c][key], 1e-9) for c in boxed]
    named = {"median": "kl_median", "p90": "kl_p90", "p99": "kl_p99", "max": "kl_max"}
    points = [
        {
            "type": "scatter",
            "mode": "markers",
            "name": q,
            "x": [r.config for r in shown],
            "y": [max(r.metrics.get(key) or 0.0, 1e-9) for r in shown],
        }
        for q, key in named.items()
        if q in ("p99", "max") or not boxed
    ]
    title = "per-token KL per config" + ("" if boxed else " (stored quantiles)")
    layout = {
        "title": {"text": title, "x": 0.02, "xanchor": "left"},
        "yaxis": {"type": "log", "title": {"text": "per-token KL (nats)"}},
        "xaxis": {"type": "category"},
        "legend": {"orientation": "h", "y": -0.2},
    }
    return {"data": ([box] if boxed else []) + points, "layout": layout}


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


def run_figures(
    results: list[Result],
    chosen: str | None = None,
    spread: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """A run's plots by name (the HTML report draws them all; a notebook asks for one), the
    ``chosen`` config marked on each Pareto plot; ``spread``: per config the quantiles of its
    per-token KL (``decide.stored.kl_spread``), for its box."""
    figures = {
        "kl_vs_mb": _scatter(results, "weight_mb", "kl_mean", "KL vs weight MB", True, chosen),
        "ppl_vs_mb": _scatter(
            results, "weight_mb", "ppl", "perplexity vs weight MB", False, chosen
        ),
        "tps_vs_kl": _scatter(
            results, "kl_mean", "decode_tps", "decode tokens/s vs KL", False, chosen
        ),
        "kl_distribution": kl_distribution(results, spread or {}),
    }
    for level in sorted({c for r in results for c in served_levels(r.metrics)}):
        key = f"serve_c{level}_out_tps"
        title = f"served: output tokens/s at concurrency {level} vs KL"
        figures[f"served_c{level}_vs_kl"] = _scatter(results, "kl_mean", key, title, False, chosen)
    if len(estimable_buckets(results)) >= 2:  # else nothing to compare across positions
        figures["kl_by_position"] = _kl_by_position(results)
    if any(depths_in(r.metrics) for r in results):
        figures["memory_vs_context"] = _memory_by_context(results)
    return figures
