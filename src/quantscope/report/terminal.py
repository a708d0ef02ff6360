"""The terminal table (one row per config) and the side-by-side generations.

Model text is always wrapped in :class:`rich.text.Text`, which is never parsed as markup.
"""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from quantscope.decide import sequential as sq
from quantscope.metrics.catalog import METRICS, TABLE, Metric
from quantscope.report.fit import visible
from quantscope.results import (
    Result,
    RunReport,
    Status,
    depths_in,
    estimable_buckets,
    served_levels,
)

ACCURACY: list[Metric] = [
    METRICS[k] for k in ("ppl", "dppl_pct", "kl_mean", "kl_p99", "top1_agree", "dp_rms")
]
EFFICIENCY: list[Metric] = [m for m in TABLE if m not in ACCURACY]
COLUMNS: list[Metric] = list(TABLE)
MIN_WINDOWS = 10  # fewer clusters make a cluster-robust standard error itself unreliable


def results_tables(report: RunReport, width: int) -> list[Table]:
    """The one-row-per-config table when it fits ``width`` columns; else the accuracy and the
    efficiency columns, each ± se on its own line, in as many tables as it takes to fit, the
    config names whole (never cut or split: a reader copies them)."""
    if _width(report, COLUMNS, one_line=True) + 11 <= width:  # + the status column
        return [_table(report, COLUMNS, _title(report), one_line=True, status=True)]
    titles = (
        _title(report) + " · ± se below each value",
        "bits/w: all weights (quantized linears only)",
    )
    tables = []
    for columns, title in zip((ACCURACY, EFFICIENCY), titles, strict=True):
        for i, group in enumerate(_packed(report, columns, width)):
            tables.append(_table(report, group, title if i == 0 else "(continued)", False, False))
    return tables


def _cells(report: RunReport, metric: Metric, one_line: bool) -> list[str]:
    return [
        metric.cell(o.result.metrics, one_line) if o.result is not None else ""
        for o in report.outcomes
    ]


def _column(report: RunReport, metric: Metric, one_line: bool) -> int:
    """Characters a metric's column needs: its head and its widest cell line."""
    lines = [line for cell in _cells(report, metric, one_line) for line in cell.splitlines()]
    head = metric.header if one_line else metric.short
    return max([len(head), *(len(line) for line in lines)])


def _names(report: RunReport) -> int:
    return max([len("config"), *(len(o.config) for o in report.outcomes)])


def _width(report: RunReport, columns: list[Metric], one_line: bool) -> int:
    """A table's width: each column with its padding and border, and the closing border."""
    return 1 + sum(
        w + 3 for w in [_names(report)] + [_column(report, m, one_line) for m in columns]
    )


def _packed(report: RunReport, columns: list[Metric], width: int) -> list[list[Metric]]:
    """``columns`` in order, in groups whose tables fit ``width`` beside the config names."""
    groups: list[list[Metric]] = [[]]
    used = 1 + _names(report) + 3
    for metric in columns:
        need = _column(report, metric, False) + 3
        if groups[-1] and used + need > width:
            groups.append([])
            used = 1 + _names(report) + 3
        groups[-1].append(metric)
        used += need
    return groups


def _table(
    report: RunReport, columns: list[Metric], title: str, one_line: bool, status: bool
) -> Table:
    # a Text, never markup: a model's or a config's name may hold brackets
    table = Table(title=Text(title), title_justify="left", show_lines=not one_line and not status)
    table.add_column("config", overflow="fold", min_width=min(_names(report), 40))
    for metric in columns:
        table.add_column(metric.header if one_line else metric.short, justify="right", no_wrap=True)
    if status:
        table.add_column("status", min_width=8)
    for outcome in report.outcomes:
        cells = [""] * len(columns)
        if outcome.result is not None:
            cells = [m.cell(outcome.result.metrics, one_line) for m in columns]
        extra = [Text(outcome.status.value)] if status else []
        table.add_row(Text(outcome.config), *cells, *extra)
    return table


def _title(report: RunReport) -> str:
    s = report.settings
    design = s.get("until_decided")
    tokens = f"{s.get('tokens_scored')} tokens"
    if isinstance(design, dict):  # each config took as many as its verdicts needed
        tokens = f"up to {s.get('tokens_scored')} tokens (until decided)"
    return (
        f"{report.provenance.get('model', '')} · {tokens}, "
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
                Text(result.config),
                "same" if diff is None else f"token {diff}",
                Text(visible(gen["text"])),
            )
        tables.append(table)
    return Group(*tables)


def outcome_notes(report: RunReport) -> list[Text]:
    """A line naming the configs reused from the store, then one per skipped or failed config."""
    reused = [o.config for o in report.outcomes if o.status is Status.REUSED]
    notes = (
        [Text(f"reused from the store (already measured): {', '.join(reused)}")] if reused else []
    )
    notes += [
        Text(f"{o.status.value} {o.config}: {o.reason}")
        for o in report.outcomes
        if o.status in (Status.SKIPPED, Status.FAILED)
    ]
    emulated: dict[str, list[str]] = {}  # one line per reason, naming every config it holds for
    for r in report.results:
        found = r.meta.get("support") or {}
        if found.get("level") == "emulated":
            emulated.setdefault(found["reason"], []).append(r.config)
    for reason, names in emulated.items():
        verb = "runs" if len(names) == 1 else "run"
        notes.append(Text(f"{', '.join(names)} {verb} emulated here: {reason}."))
    notes += [  # what a checkpoint's format does here (decompressed at load, say)
        Text(f"{r.config}: {r.meta['library']}.")
        for r in report.results
        if " checkpoint, " in str(r.meta.get("library", ""))
    ]
    notes += [
        Text(
            f"{r.config}: speed measured with layers offloaded ({_places(r)}); it is "
            "slower than on the device alone."
        )
        for r in report.results
        if r.metrics.get("offloaded")
    ]
    notes += [
        Text(f"invalid {r.config}: {r.invalid}.", style="bold red")
        for r in report.results
        if r.invalid
    ]
    windows = report.settings.get("windows")
    if isinstance(windows, int) and windows < MIN_WINDOWS:
        notes.append(
            Text(
                f"only {windows} windows: the ± (cluster-robust, per window) are themselves "
                f"uncertain below {MIN_WINDOWS} windows; raise --tokens for trustworthy errors."
            )
        )
    errors = {k: v for r in report.results for k, v in r.meta.get("task_errors", {}).items()}
    notes += [Text(f"task {name} left out: {reason}") for name, reason in errors.items()]
    notes += [
        Text(f"{r.config}, until decided: {sq.describe(r)}.")
        for r in report.results
        if sq.record(r) is not None
    ]
    return notes


def _places(result: Result) -> str:
    return ", ".join(f"{k} {v}" for k, v in (result.meta.get("placement") or {}).items())


def sources_table(report: RunReport) -> Table | None:
    """Per text source, each config's main accuracy numbers (only for runs with several)."""
    rows = [(o.config, o.result.per_source) for o in report.outcomes if o.result is not None]
    return _parts_table(rows, "per text (the rows above are their token-weighted means)", "text")


def positions_table(report: RunReport) -> Table | None:
    """Per bucket of position within the window, each config's main accuracy numbers (only
    when the scored tokens span several buckets)."""
    rows = [(o.config, o.result.by_position) for o in report.outcomes if o.result is not None]
    if len(estimable_buckets(report.results)) < 2:
        return None
    title = "by position in the window (tokens of context the model had; se over windows)"
    return _parts_table(rows, title, "position")


def depth_table(report: RunReport) -> Table | None:
    """Per config measured at depth (``--depths``; configs with ``+kv=``): the KV cache's
    bytes after d tokens (measured, and the formula's), and prefill and decode speed with d
    tokens cached."""
    rows = [r for r in report.results if depths_in(r.metrics)]
    if not rows:
        return None
    table = Table(
        title="KV cache at depth (tokens already cached; prefill of 128 tokens, then decode)",
        title_justify="left",
    )
    heads = (
        "config",
        "depth",
        "KV MiB",
        "formula MiB",
        "+ weights MiB",
        "prefill tok/s",
        "decode tok/s",
        "peak RSS MiB",
    )
    for header in heads:
        table.add_column(header, justify="left" if header == "config" else "right")
    for r in rows:
        m = r.metrics
        for d in depths_in(m):
            table.add_row(
                Text(r.config),
                f"{d:,}",
                f"{m[f'kv_bytes@{d}'] / 2**20:,.2f}",
                f"{m[f'kv_bytes_pred@{d}'] / 2**20:,.2f}",
                f"{(m.get('weight_bytes', 0) + m[f'kv_bytes@{d}']) / 2**20:,.1f}",
                f"{m[f'prefill_tps@{d}']:,.1f}",
                f"{m[f'decode_tps@{d}']:,.1f}",
                f"{m[f'peak_rss_mb@{d}']:,.0f}",
            )
    return table


def serving_table(report: RunReport, width: int = 200) -> Group | None:
    """Per config served by an engine: at each concurrency level of the load test, output
    tokens/s, time to first token and inter-token latency (median and p99), and the server's
    peak memory — one table when the config names fit beside the numbers, else one small
    table per config, titled with its name (never cut)."""
    rows = [r for r in report.results if served_levels(r.metrics)]
    if not rows:
        return None
    engine = rows[0].meta.get("engine") or {}
    size = f"{engine.get('prompt_tokens', '?')} → {engine.get('output_tokens', '?')} tokens"
    title = f"served under load (each request {size}; latencies in ms)"
    heads = ("conc.", "out tok/s", "TTFT p50", "p99", "ITL p50", "p99", "peak MiB")
    names = max(len(r.config) for r in rows)
    if names + 3 + 62 <= width:  # the numbers take about 62 columns
        return Group(_served(rows, title, heads, with_names=True))
    cards: list[Text | Table] = [Text(title, style="italic")]
    cards += [_served([r], Text(r.config), heads, with_names=False) for r in rows]
    return Group(*cards)


def _served(
    rows: list[Result], title: str | Text, heads: tuple[str, ...], with_names: bool
) -> Table:
    table = Table(title=Text(title) if isinstance(title, str) else title, title_justify="left")
    if with_names:
        table.add_column("config", no_wrap=True)
    for header in heads:
        table.add_column(header, justify="right", no_wrap=True)
    for r in rows:
        m = r.metrics
        for i, c in enumerate(served_levels(m)):
            at = f"serve_c{c}_"
            cells = [
                str(c),
                f"{m[at + 'out_tps']:,.1f}",
                f"{m[at + 'ttft_p50_ms']:,.0f}",
                f"{m[at + 'ttft_p99_ms']:,.0f}",
                f"{m[at + 'itl_p50_ms']:,.1f}",
                f"{m[at + 'itl_p99_ms']:,.1f}",
                f"{m.get('server_peak_mb', float('nan')):,.0f}" if i == 0 else "",
            ]
            table.add_row(*([Text(r.config if i == 0 else "")] if with_names else []), *cells)
    return table


def _parts_table(
    rows: list[tuple[str, dict[str, dict[str, float]]]], title: str, part: str
) -> Table | None:
    """Accuracy of each part (text source, position bucket) of each config's tokens."""
    if not any(parts for _, parts in rows):
        return None
    table = Table(title=title, title_justify="left")
    for header in ("config", part, "tokens", "windows", "ppl", "Δppl %", "KL mean", "top-1 %"):
        table.add_column(header, justify="left" if header in ("config", part) else "right")
    for config, parts in rows:
        for name, m in parts.items():
            table.add_row(
                Text(config),
                Text(name[-40:]),
                f"{m['tokens']:.0f}",
                f"{m['windows']:.0f}",
                *(
                    METRICS[k].cell(m, one_line=True)
                    for k in ("ppl", "dppl_pct", "kl_mean", "top1_agree")
                ),
            )
    return table


def tasks_table(report: RunReport) -> Table | None:
    """Per task and config: accuracy ± se, its change, flips both ways and McNemar's p."""
    rows = [(o.config, o.result.tasks) for o in report.outcomes if o.result and o.result.tasks]
    if not rows:
        return None
    table = Table(title="tasks (flips against the baseline; McNemar exact p)", title_justify="left")
    table.add_column("task", overflow="fold", min_width=12)
    table.add_column("config", overflow="fold")
    for header in ("acc %", "Δ pts", "flips ✓→✗ / ✗→✓", "p"):
        table.add_column(header, justify="right")
    for config, tasks in rows:
        for name, t in tasks.items():
            acc = f"{100 * t['accuracy']:.1f} ± {100 * t['accuracy_se']:.1f}"
            flips = f"{t['correct_to_wrong']} / {t['wrong_to_correct']} ({t['flipped_pct']:.1f}%)"
            table.add_row(
                Text(name),
                Text(config),
                acc,
                f"{100 * t['delta']:+.1f}",
                flips,
                f"{t['mcnemar_p']:.3g}",
            )
    return table
