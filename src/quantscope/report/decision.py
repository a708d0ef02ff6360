"""The decision, shown: equivalence verdicts, groups, a paired comparison and the
recommendation with its code — as rich tables on the terminal and as the HTML report's
opening section. Display only: the numbers come from ``quantscope.decide``.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from quantscope.decide import Groups, Judged, Recommendation
from quantscope.metrics import equivalence as eq
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
    """One row per config and metric, as text cells (terminal, HTML and Markdown share them)."""
    out = []
    for j in judged:
        r = j.row()
        out.append(
            {
                "config": j.config,
                "metric": j.metric,
                "Δ ± se": f"{_num(r['delta'])} ± {r['se']:.2g} {j.unit}",
                "90% CI": f"[{_num(r['low'])}, {_num(r['high'])}]",
                "margin": f"{r['margin']:g} {j.unit}",
                "verdict": r["verdict"],
                "p equiv.": _p(r["p_equivalent"]),
                "p worse": _p(r["p_worse"]),
                "tokens": f"{j.n:,}" + ("*" if j.design.startswith("stopped early") else ""),
                "tokens to resolve": _needed(r),
            }
        )
    return out


def verdict_table(judged: list[Judged], title: str, notes: list[str]) -> Group:
    table = Table(title=Text(title), title_justify="left")
    rows = verdict_rows(judged)
    for head in rows[0] if rows else ("config",):
        table.add_column(head, justify="left" if head in ("config", "metric") else "right")
    for row in rows:
        cells = [Text(v, style=_VERDICT_STYLE.get(v, "")) for v in row.values()]
        table.add_row(*cells)
    designs = [f"{j.config} {j.metric}: {j.design}" for j in judged if j.design]
    if any(j.design.startswith("stopped early") for j in judged):
        designs.insert(
            0,
            "* stopped when decided (--until-decided): the verdict is the "
            "group-sequential procedure's at this margin",
        )
    method = f"Verdicts: {eq.METHOD}, over the windows evened out into blocks."
    return Group(table, *(Text(n, style="dim") for n in (*notes, *designs, method)))


def groups_table(found: Groups) -> Table:
    what = "perplexity (token loss)" if found.metric == "ppl" else "mean KL"
    title = f"Groups by {what}: a shared letter = not shown different"
    table = Table(
        title=title, title_justify="left", caption=Text(found.method), caption_justify="left"
    )
    table.add_column("config")
    table.add_column("ppl" if found.metric == "ppl" else "KL", justify="right")
    table.add_column("group")
    for c in found.order:
        mean = found.means[c]
        table.add_row(
            Text(c),
            f"{math.exp(mean):.3f}" if found.metric == "ppl" else f"{mean:.3g}",
            found.letters[c],
        )
    return table


def pair_table(rows: list[dict[str, Any]]) -> Table:
    a, b = rows[0]["a"], rows[0]["b"]
    title = f"{a} − {b}, token by token on {rows[0]['n']:,} tokens (positive: {a} is worse)"
    table = Table(title=Text(title), title_justify="left")  # config names hold [brackets]
    for head in ("metric", "Δ ± se", "95% CI", "p", "tokens to resolve"):
        table.add_column(head, justify="left" if head == "metric" else "right")
    for r in rows:
        table.add_row(
            r["metric"],
            f"{_num(r['delta'])} ± {r['se']:.2g} {r['unit']}",
            f"[{_num(r['low'])}, {_num(r['high'])}]",
            _p(r["p"]),
            _needed(r),
        )
    return table


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
    groups = "".join(
        f"<h3>Groups by {'perplexity' if g.metric == 'ppl' else 'KL'}</h3>"
        + _html_table([{"config": c, "group": g.letters[c]} for c in g.order])
        + f"<p class='small'>{esc(g.method)}</p>"
        for g in found
    )
    floor_html = "".join(f"<li>{esc(x)}</li>" for x in floor)
    more = "".join(f"<p class='note'>{esc(x)}</p>" for x in unresolved)
    return (
        f"<section id='decision'><h2>Decision</h2>{head}<p>{esc(rec.reason)}</p>{runners}{notes}"
        f"{code}<h3>Against the baseline at margin {esc(margins)}</h3>"
        f"{_html_table(verdict_rows(judged), 'verdicts')}{more}"
        f"<h3>Noise floor</h3><ul>{floor_html}</ul>{groups}</section>"
    )
