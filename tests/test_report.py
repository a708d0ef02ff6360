"""The HTML report: escaping, nothing from the network, and a real render in headless Chromium."""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from quantscope import runner
from quantscope.config import DataSpec, RunSpec, model_spec, parse_config_list
from quantscope.report.html import render_html
from quantscope.results import Outcome, RunReport, Status

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def report(tiny_model_dir, tiny_text, tmp_path_factory) -> RunReport:
    """A real run on the tiny model, with a hostile generation planted in one config."""
    store = tmp_path_factory.mktemp("store") / "r.sqlite"
    spec = RunSpec(
        model=model_spec(str(tiny_model_dir)),
        configs=parse_config_list("fp32,bf16,bnb-nf4"),
        data=DataSpec((str(tiny_text),), tokens=200, context=64, stride=32),
        prompts=("Hi <b>there</b>",),
        max_new_tokens=3,
        speed_reps=1,
        ref_topk=16,
        store_path=str(store),
    )
    real = runner.run(spec)
    hostile = real.outcomes[2].result
    assert hostile is not None
    gens = [{**g, "text": XSS, "tokens": [XSS]} for g in hostile.generations]
    planted = dataclasses.replace(hostile, generations=gens)
    outcomes = [*real.outcomes[:2], Outcome(planted.config, Status.MEASURED, "", planted)]
    return RunReport(real.run_id, outcomes, real.settings, real.provenance)


def test_text_is_escaped_and_nothing_loads_from_the_network(report):
    page = render_html(report)
    assert XSS not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Hi &lt;b&gt;there&lt;/b&gt;" in page  # user-supplied prompts too
    markup = re.sub(r"<script[^>]*>.*?</script>", "<script></script>", page, flags=re.DOTALL)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", markup)  # no remote assets
    assert "<link" not in markup and "<script src" not in markup
    # plotly.js and its config inlined once, one script per plot (4), and nothing else: the
    # planted script is text
    assert len(re.findall(r"<script[ >]", page)) == 2 + 4


def test_report_renders_in_headless_chromium(report, tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test does)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.chrome.service import Service

    from quantscope.cli.browse import run_html
    from quantscope.specs import judge_spec

    page = tmp_path / "report.html"
    spec = judge_spec(report, margin="ppl=900%", store=report.provenance["store"])
    page.write_text(run_html(spec), "utf-8")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-component-update",
        "--window-size=1300,2000",
        f"--user-data-dir={tempfile.mkdtemp()}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(page.as_uri())
        time.sleep(1.0)  # let plotly draw
        with pytest.raises(NoAlertPresentException):
            driver.switch_to.alert.text  # noqa: B018 (the planted script must not have run)
        body = driver.find_element("tag name", "body").text
        assert XSS in body  # shown as text
        sizes = driver.execute_script(
            "return [...document.querySelectorAll('svg.main-svg')]"
            ".map(s => s.getBoundingClientRect().width * s.getBoundingClientRect().height)"
        )
        assert len(sizes) >= 4 and min(sizes) > 10_000  # every plot drew a real SVG
        points = driver.execute_script("return document.querySelectorAll('g.points path').length")
        assert points >= 3  # the configs are plotted
        # the report opens with the decision: above the results, its code and verdicts shown
        tops = driver.execute_script(
            "return ['#decision', 'pre.code', 'table.verdicts', 'h2:nth-of-type(2)']"
            ".map(q => document.querySelector(q).getBoundingClientRect().top)"
        )
        assert tops[0] < tops[1] < tops[2] < tops[3]
        assert "Recommended: bnb-nf4" in body  # a wide margin: the smallest config qualifies
        assert "Against the baseline at margin ppl=900%" in body
        # the hover toolbar never covers a plot's title
        overlaps = driver.execute_script(
            "return [...document.querySelectorAll('.js-plotly-plot')].map(p => {"
            " const t = p.querySelector('.gtitle'), m = p.querySelector('.modebar');"
            " if (!t || !m) return false;"
            " const a = t.getBoundingClientRect(), b = m.getBoundingClientRect();"
            " return !(a.right < b.left || b.right < a.left ||"
            "          a.bottom < b.top || b.bottom < a.top);})"
        )
        assert overlaps and not any(overlaps)
        legend = driver.execute_script(
            "return [...document.querySelectorAll('g.legend text')].map(e => e.textContent)"
        )
        assert any(t.startswith("recommended: ") for t in legend), legend  # the star, named
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        shot = Path(tmp_path / "report.png")
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
    finally:
        driver.quit()


def test_the_kl_distribution_is_a_box_per_config_from_the_stored_values(report):
    """Each config's per-token KL, read back from the store, drawn as one box (its quartiles
    and 5th–95th percentile whiskers) — not lines joining configs; the baseline, 0
    everywhere, has no box. Without the stored values, points only."""
    import numpy as np

    from quantscope.decide.stored import DecisionSpec, kl_spread
    from quantscope.report.figures import run_figures

    spread = kl_spread(DecisionSpec(run=report))
    assert set(spread) == {"fp32", "bf16", "bnb-nf4"}
    nf4 = spread["bnb-nf4"]
    assert nf4["p5"] <= nf4["q1"] <= nf4["median"] <= nf4["q3"] <= nf4["p95"] <= nf4["max"]
    assert np.isclose(nf4["median"], report.outcomes[2].result.metrics["kl_median"], rtol=1e-3)
    figure = run_figures(report.results, spread=spread)["kl_distribution"]
    box = figure["data"][0]
    assert box["type"] == "box" and box["x"] == ["bf16", "bnb-nf4"]  # fp32: 0, not drawn
    assert all("lines" not in t.get("mode", "") for t in figure["data"])
    plain = run_figures(report.results)["kl_distribution"]
    assert {t["type"] for t in plain["data"]} == {"scatter"}  # no values at hand: points


def test_pareto_labels_do_not_cover_each_other():
    from quantscope.report.figures import _box, label_places

    xs, ys = [0.30, 0.31, 0.32, 0.33, 0.9], [0.5, 0.51, 0.49, 0.5, 0.1]
    labels = ["bnb-int8", "torchao-int8wo", "quanto-int8", "hqq[bits=8]", "bnb-nf4"]
    places = label_places(xs, ys, labels)
    points = list(zip(xs, ys, labels, strict=True))
    boxes = [_box(x, y, 0.0145 * len(t), p) for (x, y, t), p in zip(points, places, strict=True)]
    dots = [(x - 0.01, y - 0.01, x + 0.01, y + 0.01) for x, y, _ in points]
    for i, a in enumerate(boxes):  # no label covers another label or a point
        for b in [*boxes[i + 1 :], *dots]:
            assert min(a[2], b[2]) <= max(a[0], b[0]) or min(a[3], b[3]) <= max(a[1], b[1])
    # all above their points, as before, the first two labels covered each other
    above = [_box(x, y, 0.0145 * len(t), (0, 0.0475)) for x, y, t in points]
    assert min(above[0][2], above[1][2]) > max(above[0][0], above[1][0])
