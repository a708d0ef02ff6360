"""The terminal table (one row per config) and the side-by-side generations.

Model text is always wrapped in :class:`rich.text.Text`, which is never parsed as markup.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from rich.console import Group
from rich.table import Table
from rich.text import Text

from quantscope.results import Result, RunReport

Format = Callable[[dict[str, float]], str]


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _pm(value: float | None, se: float | None, digits: int = 3, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "–"
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return f"{text} ± {_num(se, digits)}"


def _sig(value: float | None) -> str:
    """Three significant digits, for KL values spanning many decades."""
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.3g}"


COLUMNS: list[tuple[str, Format]] = [
    ("weights MB", lambda m: _num(m["weight_mb"], 1)),
    ("bits/weight", lambda m: f"{_num(m['bits_per_weight'], 2)} ({_num(m['linear_bits_per_weight'], 2)})"),
    ("ppl ± se", lambda m: _pm(m["ppl"], m["ppl_se"], 3)),
    ("Δppl %", lambda m: _pm(m["dppl_pct"], m["dppl_pct_se"], 2, sign=True)),
    ("KL mean ± se", lambda m: f"{_sig(m['kl_mean'])} ± {_sig(m['kl_se'])}"),
    ("KL p99", lambda m: _sig(m["kl_p99"])),
    ("top-1 agree %", lambda m: _pm(100 * m["top1_agree"], 100 * m["top1_agree_se"], 2)),
    ("Δp rms", lambda m: _num(m["dp_rms"], 4)),
    ("prefill tok/s", lambda m: _num(m["prefill_tps"], 0)),
    ("decode tok/s", lambda m: _num(m["decode_tps"], 1)),
    ("load s", lambda m: _num(m["load_s"], 2)),
]


def results_table(report: RunReport) -> Table:
    """One row per config; skipped and failed configs say why in the last column."""
    table = Table(title=_title(report), title_justify="left", show_lines=False)
    table.add_column("config", no_wrap=True)
    for header, _ in COLUMNS:
        table.add_column(header, justify="right")
    table.add_column("status")
    for outcome in report.outcomes:
        if outcome.result is not None:
            metrics = outcome.result.metrics
            cells = [fmt(metrics) for _, fmt in COLUMNS]
            table.add_row(Text(outcome.config), *cells, outcome.status)
        else:
            blanks = [""] * len(COLUMNS)
            table.add_row(Text(outcome.config), *blanks, Text(f"{outcome.status}: {outcome.reason}"))
    return table


def _title(report: RunReport) -> str:
    s = report.settings
    return (
        f"{report.provenance.get('model', '')} · {s.get('tokens_scored')} tokens in "
        f"{s.get('windows')} windows (context {s.get('context')}, stride {s.get('stride')}) · "
        f"seed {s.get('seed')} · {s.get('device_type')} · run {report.run_id}"
    )


def generations_view(results: list[Result]) -> Group:
    """Per prompt, each config's greedy continuation and where it first leaves the baseline."""
    tables = []
    if not results or not results[0].generations:
        return Group()
    for i, first in enumerate(results[0].generations):
        table = Table(title=Text(f"Prompt: {first['prompt']}"), title_justify="left", expand=True)
        table.add_column("config", no_wrap=True)
        table.add_column("first diff", justify="right")
        table.add_column("generation (greedy)")
        for result in results:
            gen = result.generations[i]
            diff = gen.get("first_diff")
            table.add_row(
                Text(result.config), "same" if diff is None else f"token {diff}", Text(gen["text"])
            )
        tables.append(table)
    return Group(*tables)
