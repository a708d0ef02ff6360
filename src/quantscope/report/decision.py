"""The decision, shown: equivalence verdicts, groups, a paired comparison and the
recommendation with its code — as rich tables on the terminal and as the HTML report's
opening section. Display only: the numbers come from ``quantscope.decide``.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.text import Text

from quantscope.decide import Groups, Judged, Recommendation
from quantscope.metrics import equivalence as eq
from quantscope.report.fit import fitted
from quantscope.report.html import esc

_VERDICT_STYLE = {
    "equivalent": "green",
    "non-inferior": "green",
    "worse": "red",
    "not resolved": "yellow",
}


def _num(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}g}"


def _p(x: float) -> str:
    return "–" if x is None or math.isnan(x) else (f"{x:.2g}" if x >= 1e-4 else "<1e-4")


def _needed(row: dict[str, Any]) -> str:
    n = row["needed"]
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return ""
    return "∞" if math.isinf(n) else f"{n:,.0f}"


def verdict_rows(judged: list[Judged]) -> list[dict[str, str]]:
    """One row per config and metric, as text cells (terminal, HTML and Markdown share them);
    the unit is the metric's, said once in its name."""
    out = []
    for j in judged:
        r = j.row()
        out.append(
            {
                "config": j.config,
                "metric": f"{j.metric} ({j.unit})",
                "verdict": r["verdict"],
                "Δ ± se": f"{_num(r['delta'])} ± {r['se']:.2g}",
                "90% CI": f"[{_num(r['low'])}, {_num(r['high'])}]",
                "margin": f"{r['margin']:g}",
                "p equiv.": _p(r["p_equivalent"]),
                "p worse": _p(r["p_worse"]),
                "tokens": f"{j.n:,}" + ("*" if j.design.startswith("stopped early") else ""),
                "tokens to resolve": _needed(r),
            }
        )
    return out


def verdict_table(judged: list[Judged], title: str, notes: list[str], width: int) -> Group:
    """The verdicts in as many tables as ``width`` needs (config and metric in each)."""
    designs = [f"{j.config} {j.metric}: {j.design}" for j in judged if j.design]
    if any(j.design.startswith("stopped early") for j in judged):
        designs.insert(
            0,
            "* stopped when decided (--until-decided): the verdict is the "
            "group-sequential procedure's at this margin",
        )
    method = f"Verdicts: {eq.METHOD}, over the windows evened out into blocks."
    return fitted(
        verdict_rows(judged),
        ("config", "metric"),
        width,
        title,
        (*notes, *designs, method),
        style=lambda head, value: _VERDICT_STYLE.get(value, "") if head == "verdict" else "",
        left=("verdict",),
    )


def group_rows(found: list[Groups]) -> list[dict[str, str]]:
    """One row per config: each metric's mean and group letters, in the first grouping's
    order (best first)."""
    if not found:
        return []
    rows = []
    for config in found[0].order:
        row = {"config": config}
        for g in found:
            mean = g.means.get(config, math.nan)
            if g.metric == "ppl":
                row["ppl"] = f"{math.exp(mean):.3f}"
            else:
                row["KL"] = f"{mean:.3g}"
            row[f"{'ppl' if g.metric == 'ppl' else 'KL'} group"] = g.letters.get(config, "")
        rows.append(row)
    return rows


def groups_table(found: list[Groups], width: int) -> Group:
    """Every grouping in one table: a shared letter = not shown different."""
    what = " and ".join("perplexity" if g.metric == "ppl" else "mean KL" for g in found)
    title = f"Groups by {what}: a shared letter = not shown different"
    methods = list(dict.fromkeys(g.method for g in found))
    rows = group_rows(found)
    left = [h for h in rows[0] if h.endswith("group")] if rows else []
    return fitted(rows, ("config",), width, title, methods, left=left)


def pair_table(rows: list[dict[str, Any]], width: int) -> Group:
    a, b = rows[0]["a"], rows[0]["b"]
    title = f"{a} − {b}, token by token on {rows[0]['n']:,} tokens (positive: {a} is worse)"
    cells = [
        {
            "metric": f"{r['metric']} ({r['unit']})",
            "Δ ± se": f"{_num(r['delta'])} ± {r['se']:.2g}",
            "95% CI": f"[{_num(r['low'])}, {_num(r['high'])}]",
            "p": _p(r["p"]),
            "tokens to resolve": _needed(r),
        }
        for r in rows
    ]
    return fitted(cells, ("metric",), width, title)


def recommendation_view(rec: Recommendation) -> Group:
    parts: list[Any] = []
    head = f"Recommended: {rec.chosen.config}" if rec.chosen else "Nothing meets the budget"
    parts.append(Text(head, style="bold green" if rec.chosen else "bold red"))
    parts.append(Text(rec.reason))
    if rec.runners_up:
        parts.append(
            Text(
                "Runners-up: "
                + "; ".join(
                    f"{c.config} ({c.result.metrics.get('weight_mb', math.nan):.1f} MB)"
                    for c in rec.runners_up
                )
            )
        )
    parts += [Text(n, style="yellow") for n in rec.notes]
    if rec.code:
        parts.append(Text("The code that loads it (printed plainly below, to copy):", style="bold"))
    return Group(*parts)


# --- HTML ---------------------------------------------------------------------------------


def _html_table(rows: list[dict[str, str]], cls: str = "") -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{esc(h)}</th>" for h in rows[0])
    body = "".join(
        "<tr>"
        + "".join(f"<td class='{esc(v).replace(' ', '-')}'>{esc(v)}</td>" for v in row.values())
        + "</tr>"
        for row in rows
    )
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def decision_html(
    rec: Recommendation,
    judged: list[Judged],
    margins: str,
    found: list[Groups],
    floor: list[str],
    unresolved: list[str],
) -> str:
    """The report's opening section: recommendation, its code, verdicts, groups, floor."""
    if rec.chosen:
        head = f"<p class='chosen'>Recommended: <b>{esc(rec.chosen.config)}</b></p>"
    else:
        head = "<p class='none'>No measured config meets the budget.</p>"
    runners = ""
    if rec.runners_up:
        runners = "<p>Runners-up: " + esc("; ".join(c.config for c in rec.runners_up)) + "</p>"
    notes = "".join(f"<p class='note'>{esc(n)}</p>" for n in rec.notes)
    code = f"<pre class='code'><code>{esc(rec.code)}</code></pre>" if rec.code else ""
    rows = verdict_rows(judged)
    for row in rows:  # each config's group letters, a column of the verdicts
        for g in found:
            row[f"{'ppl' if g.metric == 'ppl' else 'KL'} group"] = g.letters.get(row["config"], "")
    groups = "".join(
        f"<p class='small'>{'Perplexity' if g.metric == 'ppl' else 'KL'} groups (a shared "
        f"letter = not shown different): {esc(g.method)}</p>"
        for g in found
    )
    floor_html = "".join(f"<li>{esc(x)}</li>" for x in floor)
    more = "".join(f"<p class='note'>{esc(x)}</p>" for x in unresolved)
    return (
        f"<section id='decision'><h2>Decision</h2>{head}<p>{esc(rec.reason)}</p>{runners}{notes}"
        f"{code}<h3>Against the baseline at margin {esc(margins)}</h3>"
        f"{_html_table(rows, 'verdicts')}{groups}{more}"
        f"<h3>Noise floor</h3><ul>{floor_html}</ul></section>"
    )
