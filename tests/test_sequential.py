"""Stopping when decided: the boundaries, the stopping rule, and a run end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from quantscope import runner
from quantscope.config import DataSpec, Margins, RunSpec, model_spec, parse_config_list
from quantscope.decide import analysis
from quantscope.errors import UserError
from quantscope.metrics import equivalence as eq
from quantscope.metrics import sequential as seq
from quantscope.metrics.stats import Estimate
from quantscope.report import terminal
from quantscope.store import Store
from quantscope.sweeps.sweep_file import parse_sweep
from quantscope.token_values import TokenValues


@pytest.mark.parametrize("kind", seq.SPENDING)
def test_boundaries_spend_exactly_alpha_on_a_brownian_motion(kind):
    """Unequal looks; 400,000 simulated paths of the statistics the levels assume: the share
    crossing any boundary must be alpha (Monte-Carlo se 0.03 points), and by each look the
    spending function's α(t)."""
    times = [0.2, 0.35, 0.6, 0.8, 1.0]
    levels = seq.nominal_levels(times, 0.05, kind)
    rng = np.random.default_rng(3)
    steps = rng.standard_normal((400_000, len(times))) * np.sqrt(np.diff([0.0, *times]))
    z = np.cumsum(steps, axis=1) / np.sqrt(times)
    crossed = np.cumsum(z >= norm.isf(levels), axis=1) > 0
    for k, t in enumerate(times):
        assert abs(crossed[:, k].mean() - seq.spent(t, 0.05, kind)) < 0.0015, (kind, t)


def test_spending_functions_start_at_zero_and_end_at_alpha():
    for kind in seq.SPENDING:
        assert seq.spent(0.0, 0.05, kind) == 0.0
        assert math.isclose(seq.spent(1.0, 0.05, kind), 0.05)
        assert seq.spent(0.3, 0.05, kind) < seq.spent(0.6, 0.05, kind)
    with pytest.raises(ValueError):
        seq.spent(0.5, 0.05, "haybittle")


def _est(value: float, se: float, clusters: int = 8) -> Estimate:
    return Estimate(value, se, clusters * 256, clusters)


def test_the_monitor_stops_once_every_margin_is_resolved_and_keeps_rejections():
    m = seq.Monitor((seq.Margin("ppl", 0.01, True), seq.Margin("kl", 0.02, False)), 4096)
    assert not m.look({"ppl": _est(0.0, 0.001, 3), "kl": _est(0.001, 1e-4, 3)}, 768)  # < 4
    assert not m.looks
    # KL clearly below, ppl not yet resolved: go on
    assert not m.look({"ppl": _est(0.004, 0.01, 4), "kl": _est(0.001, 1e-4, 4)}, 1024)
    assert m.verdict("kl") == eq.EQUIVALENT and m.verdict("ppl") == eq.UNRESOLVED
    # now ppl is clearly within ±1% on the log scale; the KL rejection made before stands
    assert m.look({"ppl": _est(0.0, 0.001, 8), "kl": _est(0.03, 0.05, 8)}, 2048)
    rec = m.record()
    assert rec["verdicts"] == {"ppl": eq.EQUIVALENT, "kl": eq.EQUIVALENT}
    assert [x["tokens"] for x in rec["looks"]] == [1024, 2048] and rec["stopped_early"]
    assert rec["looks"][0]["level"] < rec["looks"][1]["level"] < 0.05


def test_a_two_sided_margin_is_not_stopped_at_non_inferior():
    m = seq.Monitor((seq.Margin("ppl", 0.01, True),), 4096)
    # Δ shown below +m but not above −m (much better than the baseline, or too noisy)
    assert not m.look({"ppl": _est(-0.02, 0.004, 8)}, 2048)
    assert m.verdict("ppl") == eq.NONINFERIOR


def test_until_decided_needs_a_ppl_or_kl_margin_and_a_known_spending():
    with pytest.raises(UserError, match="needs a perplexity or KL margin"):
        RunSpec(until_decided=Margins(acc=1.0))
    with pytest.raises(UserError, match="--spending"):
        RunSpec(until_decided=Margins(kl=0.01), spending="even")


def test_a_sweep_file_takes_until_decided_and_its_spending():
    sweep = parse_sweep(
        {
            "models": ["bundled"],
            "configs": ["fp32"],
            "settings": {"until_decided": "ppl=1%,kl=0.02", "spending": "linear"},
        }
    )
    run = sweep.runs()[0]
    assert run.until_decided == Margins(ppl=1.0, kl=0.02) and run.spending == "linear"


def _spec(model_dir, text, store, **kw) -> RunSpec:
    return RunSpec(
        model=model_spec(str(model_dir)),
        configs=parse_config_list("fp32,rtn[bits=2,group=32]"),
        data=DataSpec((str(text),), tokens=400, context=64, stride=32),
        prompts=("Hello there",),
        max_new_tokens=4,
        speed_reps=1,
        batch_size=2,
        ref_topk=32,
        store_path=str(store),
        **kw,
    )


def test_a_run_until_decided_stops_clear_configs_early_and_stays_comparable(
    tiny_model_dir, tiny_text, tmp_path
):
    store = tmp_path / "r.sqlite"
    design = Margins(kl=0.01)  # (the tiny random model's 2-bit loss change is too noisy)
    report = runner.run(_spec(tiny_model_dir, tiny_text, store, until_decided=design))
    fp32, low = report.results
    planned = report.settings["tokens_scored"]
    for r in (fp32, low):
        rec = r.meta["sequential"]
        assert rec["stopped_early"] and r.metrics["tokens"] < planned
        assert r.metrics["tokens_planned"] == planned and rec["spending"] == "pocock"
    # fp32 against its own reference: no difference at all, equivalent at the first look
    assert fp32.meta["sequential"]["verdicts"] == {"kl": eq.EQUIVALENT}
    assert low.meta["sequential"]["verdicts"]["kl"] == eq.WORSE
    judged = {(j.config, j.metric): j for j in analysis.verdicts(report.results, design)}
    assert judged[("fp32", "kl")].design.startswith("stopped early")
    assert judged[(low.config, "kl")].verdict.verdict == eq.WORSE
    assert "(until decided)" in str(terminal.results_tables(report, 200)[0].title)
    notes = " ".join(str(n) for n in terminal.outcome_notes(report))
    assert "fp32, until decided: stopped early" in notes
    # at a margin the run was not designed for: a fixed-sample verdict, said so
    other = analysis.verdicts(report.results, Margins(kl=0.5))
    assert all(j.design.startswith("fixed-sample verdict") for j in other)

    # a fixed run on the same store measures anew (nothing taken for the other design) ...
    fixed = runner.run(_spec(tiny_model_dir, tiny_text, store))
    assert [o.status for o in fixed.outcomes] == ["measured", "measured"]
    full = fixed.results[1]
    assert full.metrics["tokens"] == planned and "sequential" not in full.meta
    # ... and the windows the sequential run used carry their own index in the text, so the
    # two runs' per-token values line up window by window (the loss; the KL's sampled tail
    # part is drawn in scoring order, so it differs within its sampling error)
    with Store(store) as opened:
        part = TokenValues.from_bytes(opened.token_values(low.key))
        whole = TokenValues.from_bytes(opened.token_values(full.key))
    used = np.unique(part.clusters)
    assert len(used) < len(np.unique(whole.clusters))
    for w in used[:3]:
        np.testing.assert_allclose(
            part.nll[part.clusters == w], whole.nll[whole.clusters == w], rtol=1e-5
        )
