"""The metric catalog is the one description every view reads: the docs' column table,
the terminal heads, the summary rows, the HTML report's heads and axis titles, budgets."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

from quantscope.config import Budget
from quantscope.metrics.catalog import METRICS, TABLE, markdown_table, summary_keys
from quantscope.mixed.search import describe_budget
from quantscope.report.formats import run_rows
from quantscope.report.html import render_html
from quantscope.report.terminal import results_tables
from quantscope.store import Store

ROOT = Path(__file__).parents[1]


def _report(tmp_path: Path):
    path = tmp_path / "s.sqlite"
    shutil.copy(ROOT / "tests" / "fixtures" / "store-0.1.sqlite", path)
    with Store(path) as store:
        return store.report("latest")


def test_the_docs_column_table_is_the_catalog():
    page = ROOT / "docs" / "getting-started.md"  # "What a run prints"
    assert markdown_table() in page.read_text(encoding="utf-8")


def test_tables_and_rows_take_heads_and_keys_from_the_catalog(tmp_path):
    report = _report(tmp_path)
    console = Console(record=True, width=250)
    for table in results_tables(report, 250):
        console.print(table)
    text = console.export_text()
    assert all(m.header in text for m in TABLE)
    row = run_rows(report)[0]
    assert list(row) == ["config", "status", *summary_keys()]
    kl = METRICS["kl_mean"]
    assert kl.cell(report.results[1].metrics, one_line=True) in text  # bf16's KL ± se


def test_the_html_report_titles_axes_in_words(tmp_path):
    page = render_html(_report(tmp_path))
    figures = page.replace('": "', '":"').replace("\\u002f", "/")  # plotly escapes "/"
    for key in ("weight_mb", "kl_mean", "ppl", "decode_tps"):
        assert f'"text":"{METRICS[key].label}"' in figures, key
    assert '"text":"kl_mean"' not in figures
    assert all(f"<th>{m.header}</th>" in page for m in TABLE if "<" not in m.header)


def test_budgets_are_described_in_the_catalog_s_terms():
    budget = Budget(max_kl=0.05, max_ppl_increase=2.0, max_mb=200.0)
    assert describe_budget(budget) == "KL ≤ 0.05, Δppl ≤ 2%, weights ≤ 200 MB"


def test_a_kl_estimate_below_zero_is_shown_as_zero_within_its_error_and_kept_raw():
    """The tail-sampled KL is unbiased, so near zero its estimate can dip below: tables show
    the bound, 0, with the estimate's error; the JSON and CSV rows keep the estimate."""
    from quantscope.metrics.catalog import METRICS
    from quantscope.report.formats import run_rows
    from quantscope.results import Outcome, Result, RunReport, Status

    metrics = {"kl_mean": -4.8e-06, "kl_se": 2.5e-05, "kl_p99": -1e-7, "dppl_pct": -0.5}
    assert METRICS["kl_mean"].cell(metrics) == "0\n± 2.5e-05"
    assert METRICS["kl_p99"].text(metrics["kl_p99"]) == "0"
    assert METRICS["dppl_pct"].text(metrics["dppl_pct"]) == "-0.50"  # no bound: as measured
    result = Result("k", "tiny-model", "m", "d", "s", metrics)
    report = RunReport("r", [Outcome("tiny-model", Status.MEASURED, "", result)], {}, {})
    assert run_rows(report)[0]["kl_mean"] == -4.8e-06
