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
