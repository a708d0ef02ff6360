"""Type-I error and coverage of every verdict kind on the bundled model's own per-token values.

The fixture (tests/fixtures/token_values.npz, made by benchmarks/make_token_fixture.py from a
`quantscope run --tokens 16384` of the bundled model: 64 windows) holds each default config's
per-token loss change and KL. Whole windows are drawn with replacement, the population is
moved so its truth sits exactly on the margin (loss changes shifted; KL, which cannot go below
zero, scaled), and each draw is judged as the product judges it. A verdict's type-I error must
be at most 5% plus two Monte-Carlo standard errors at 8, 16, 32 and 64 windows; the printed
90% intervals must hold the truth at least 88% of the time. Power is printed beside them
(`pytest -s`); benchmarks/intervals.py prints the table before and after the correction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from quantscope.metrics import equivalence as eq
from quantscope.metrics import harness as hs
from quantscope.metrics.stats import flips
from quantscope.recovery import recovery

FIXTURE = Path(__file__).parent / "fixtures" / "token_values.npz"
CONFIGS = ("bf16", "bnb-int8", "bnb-nf4")
SIZES = (8, 16, 32, 64)
REPS = 8000  # Monte-Carlo se of a 5% rate: 0.24 points
PPL_MARGIN = math.log1p(0.01)  # ppl=1%, on the log scale the verdict uses
KL_MARGIN = 0.02
ALPHA = eq.ALPHA


def load() -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    with np.load(FIXTURE) as z:
        info = json.loads(str(z["info"]))
        clusters = z["clusters"].astype(np.int64)
        n = len(clusters)
        series = {}
        for c in info["configs"]:
            series[f"{c}/dnll"] = z[f"{c}/dnll"].astype(np.float64)
            series[f"{c}/kl"] = z[f"{c}/kl"].astype(np.float64)
            series[f"{c}/agree"] = np.unpackbits(z[f"{c}/agree"])[:n].astype(np.float64)
    return series, clusters, info


@pytest.fixture(scope="module")
def pool() -> hs.Pool:
    series, clusters, _ = load()
    return hs.Pool.of(series, clusters)


def _check(rows: list[dict], name: str, hits: np.ndarray, **extra: object) -> None:
    p, se = hs.rate(hits)
    rows.append({"kind": name, **extra, "rate": f"{p:.4f}", "limit": f"{ALPHA + 2 * se:.4f}"})
    assert p <= ALPHA + 2 * se, f"{name} {extra}: type-I {p:.4f} over {ALPHA + 2 * se:.4f}"


def test_the_fixture_is_the_bundled_models_run():
    series, clusters, info = load()
    assert info["windows"] == 64 and info["tokens"] == len(clusters) == 16384
    assert set(CONFIGS) <= set(info["configs"])
    # the per-token KL is right-skewed, the reason the correction exists
    kl = series["bnb-nf4/kl"]
    assert float(np.mean((kl - kl.mean()) ** 3)) > 0


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_fixed_sample_verdicts_hold_their_type_one_error(pool, config):
    rng = np.random.default_rng(7)
    rows: list[dict] = []
    mu_d, mu_k = pool.mean(f"{config}/dnll"), pool.mean(f"{config}/kl")
    for g in SIZES:
        draw = pool.draw(g, REPS, rng)
        at_upper = draw.estimate(draw.series(f"{config}/dnll", shift=PPL_MARGIN - mu_d))
        at_lower = draw.estimate(draw.series(f"{config}/dnll", shift=-PPL_MARGIN - mu_d))
        kl = draw.estimate(draw.series(f"{config}/kl", scale=KL_MARGIN / mu_k))

        def p(est, bound, below):
            return hs.p_value(est, bound, below, "corrected")

        equivalent_up = (p(at_upper, PPL_MARGIN, True) < ALPHA) & (
            p(at_upper, -PPL_MARGIN, False) < ALPHA
        )
        equivalent_low = (p(at_lower, PPL_MARGIN, True) < ALPHA) & (
            p(at_lower, -PPL_MARGIN, False) < ALPHA
        )
        _check(rows, "ppl equivalent (Δ at +m)", equivalent_up, windows=g)
        _check(rows, "ppl equivalent (Δ at −m)", equivalent_low, windows=g)
        _check(
            rows, "ppl below +m (budget bound)", p(at_upper, PPL_MARGIN, True) < ALPHA, windows=g
        )
        _check(rows, "ppl worse", p(at_upper, PPL_MARGIN, False) < ALPHA, windows=g)
        _check(rows, "kl below margin", p(kl, KL_MARGIN, True) < ALPHA, windows=g)
        _check(rows, "kl worse", p(kl, KL_MARGIN, False) < ALPHA, windows=g)
    print(f"\n{config}\n{hs.summary(rows)}")


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["dnll", "kl", "agree"])
def test_pairs_and_groups_hold_their_error_rates(pool, metric):
    """Config against config (`compare --pair`): the per-token difference of two configs,
    centred so the truth is no difference; groups: three configs centred to one mean, Holm over
    the three pairs (family-wise error)."""
    rng = np.random.default_rng(11)
    rows: list[dict] = []
    names = [f"{c}/{metric}" for c in CONFIGS]
    means = [pool.mean(n) for n in names]
    for g in SIZES:
        draw = pool.draw(g, REPS, rng)
        centred = [draw.series(n, shift=-m) for n, m in zip(names, means, strict=True)]
        ps = []
        for i, j in ((0, 1), (0, 2), (1, 2)):
            est = draw.estimate(centred[i] - centred[j])
            two = np.minimum(
                1.0,
                2
                * np.minimum(
                    hs.p_value(est, 0.0, True, "corrected"),
                    hs.p_value(est, 0.0, False, "corrected"),
                ),
            )
            ps.append(two)
        _check(rows, f"pair {metric} differs", ps[2] < ALPHA, windows=g)
        _check(rows, f"groups {metric} (Holm, 3 pairs)", np.min(ps, axis=0) < ALPHA / 3, windows=g)
    print(f"\n{hs.summary(rows)}")


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_printed_ninety_percent_intervals_cover(pool, config):
    rng = np.random.default_rng(13)
    rows = []
    for g in SIZES:
        draw = pool.draw(g, REPS, rng)
        for metric in ("dnll", "kl"):
            name = f"{config}/{metric}"
            low, high = hs.interval(draw.estimate(draw.series(name)), 0.90, "corrected")
            truth = pool.mean(name)
            cover = float(np.mean((low <= truth) & (truth <= high)))
            rows.append({"interval": metric, "windows": g, "coverage": f"{cover:.4f}"})
            assert cover >= 0.88, f"{name} at {g} windows: coverage {cover:.4f}"
    print(f"\n{config}\n{hs.summary(rows)}")


@pytest.mark.slow
def test_recovery_of_the_gap_interval_covers(pool):
    """`recover`'s "% of the KL gap" (1 − after/before, ± its delta-method se): with bnb-nf4 as
    the plain config and bnb-int8 as the recovered one, ± 1.645 se must hold the truth ≥ 88%."""
    rng = np.random.default_rng(17)
    truth = 1 - pool.mean("bnb-int8/kl") / pool.mean("bnb-nf4/kl")
    found = {}
    for g in SIZES:
        draw = pool.draw(g, REPS // 4, rng)
        before = draw.estimate(draw.series("bnb-nf4/kl"))
        after = draw.estimate(draw.series("bnb-int8/kl"))
        r, se = np.vectorize(recovery)(before[0], before[1], after[0], after[1])
        cover = float(np.mean(np.abs(r - truth) <= 1.645 * se))
        found[g] = cover
        assert cover >= 0.88, f"recovery interval at {g} windows: coverage {cover:.4f}"
    print(f"\nrecovery coverage {found}")


@pytest.mark.parametrize(
    "losses,gains,margin", [(0.06, 0.02, 4.0), (0.03, 0.01, 2.0), (0.10, 0.05, 5.0)]
)
def test_task_accuracy_verdicts_hold_their_type_one_error(losses, gains, margin):
    """Task items are independent, so their population is the flip distribution itself: each
    item lost (+1), gained (−1) or unchanged, drawn with the truth (losses − gains) on the
    margin. "Within the margin" must come out ≤ 5% + 2 se at 100 to 800 items (the default
    --task-limit is 200). Measured: at 50 items with 10%/5% flips, 6.1% — too few flips for
    any normal-based interval; 100 items is the smallest size held."""
    rng = np.random.default_rng(19)
    for items in (100, 200, 400, 800):
        counts = rng.multinomial(items, [losses, gains, 1 - losses - gains], size=4000)
        hits = np.array([eq.p_below(flips(b, c, items), margin) < ALPHA for b, c, _ in counts])
        p, se = hs.rate(hits)
        assert p <= ALPHA + 2 * se, f"{items} items: {p:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_sequential_verdicts_hold_their_type_one_error(pool, config):
    """--until-decided: looks after every 4 windows from the 4th, Pocock-type spending; a
    false claim at any look counts."""
    rng = np.random.default_rng(23)
    rows: list[dict] = []
    mu_d, mu_k = pool.mean(f"{config}/dnll"), pool.mean(f"{config}/kl")
    for g in SIZES:
        draw = pool.draw(g, REPS, rng)
        upper = draw.series(f"{config}/dnll", shift=PPL_MARGIN - mu_d)
        kl = draw.series(f"{config}/kl", scale=KL_MARGIN / mu_k)
        below_ppl = hs.sequential_claims(draw, upper, PPL_MARGIN, True)
        _check(rows, "sequential ppl below +m / equivalent", below_ppl, windows=g)
        _check(
            rows,
            "sequential ppl worse",
            hs.sequential_claims(draw, upper, PPL_MARGIN, False),
            windows=g,
        )
        _check(
            rows,
            "sequential kl below margin",
            hs.sequential_claims(draw, kl, KL_MARGIN, True),
            windows=g,
        )
        _check(
            rows, "sequential kl worse", hs.sequential_claims(draw, kl, KL_MARGIN, False), windows=g
        )
    print(f"\n{config}\n{hs.summary(rows)}")


@pytest.mark.slow
def test_the_harness_catches_the_plain_t():
    """The harness has teeth: the plain t on the windows as they were (the first window of
    511 tokens, the last of one) claims "KL below the margin" too often somewhere."""
    series, clusters, _ = load()
    raw = hs.Pool.of(series, clusters, even=False)
    rng = np.random.default_rng(29)
    worst = 0.0
    for config in CONFIGS:
        mu = raw.mean(f"{config}/kl")
        for g in (8, 16):
            draw = raw.draw(g, REPS, rng)
            est = draw.estimate(draw.series(f"{config}/kl", scale=KL_MARGIN / mu))
            p, se = hs.rate(hs.p_value(est, KL_MARGIN, True, "t") < ALPHA)
            worst = max(worst, p - 2 * se)
    assert worst > ALPHA
