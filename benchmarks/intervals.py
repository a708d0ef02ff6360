"""Type-I error, power and coverage of the verdicts, before and after the skew correction, on
the bundled model's own per-token values (tests/fixtures/token_values.npz: 64 windows).

    python benchmarks/intervals.py [--reps 8000] [--configs bf16,bnb-int8,bnb-nf4,bnb-fp4]

"before": the plain t on windows − 1 df over the windows as they were (the first window of a
text scores 511 tokens, the last may score one); "after": the product's skew-corrected t over
windows evened out into blocks. Whole windows are drawn with replacement; for the type-I
error the population is moved to sit on the margin (loss changes shifted, KL scaled); power
is the share resolved when the truth is clearly inside (Δ = 0 for ppl, KL = margin/2) or
clearly outside (2 × the margin, "worse"); coverage is that of the two-sided 90% interval.
Also the sequential procedure (--until-decided; looks every 4 windows): type-I error, and the
windows it used on average where the truth is clearly inside or outside.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from quantscope.metrics import harness as hs
from test_harness import load

ALPHA = 0.05
PPL = math.log1p(0.01)
KL = 0.02


def _claims(draw, method: str, config: str, where: str) -> dict[str, np.ndarray]:
    """Each verdict's claims with the truth placed at ``where`` (margin / inside / outside)."""
    pool = draw.pool
    mu_d, mu_k = pool.mean(f"{config}/dnll"), pool.mean(f"{config}/kl")
    d_at = {"margin": PPL, "inside": 0.0, "outside": 2 * PPL}[where]
    k_at = {"margin": KL, "inside": KL / 2, "outside": 2 * KL}[where]
    d = draw.estimate(draw.series(f"{config}/dnll", shift=d_at - mu_d))
    k = draw.estimate(draw.series(f"{config}/kl", scale=k_at / mu_k))

    def p(est, bound, below):
        return hs.p_value(est, bound, below, method) < ALPHA

    return {
        "ppl equivalent": p(d, PPL, True) & p(d, -PPL, False),
        "ppl worse": p(d, PPL, False),
        "kl below margin": p(k, KL, True),
        "kl worse": p(k, KL, False),
    }


def _coverage(draw, method: str, config: str) -> dict[str, float]:
    out = {}
    for metric in ("dnll", "kl"):
        name = f"{config}/{metric}"
        low, high = hs.interval(draw.estimate(draw.series(name)), 0.90, method)
        truth = draw.pool.mean(name)
        out[metric] = float(np.mean((low <= truth) & (truth <= high)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=8000)
    parser.add_argument("--configs", default="bf16,bnb-int8,bnb-nf4,bnb-fp4")
    args = parser.parse_args()
    series, clusters, info = load()
    pools = {
        "before": hs.Pool.of(series, clusters, even=False),
        "after": hs.Pool.of(series, clusters),
    }
    methods = {"before": "t", "after": "corrected"}
    print(
        f"fixture: run {info['run']}, {info['tokens']} tokens in {info['windows']} windows; "
        f"{args.reps} draws per cell "
        f"(Monte-Carlo se of 5%: {100 * math.sqrt(0.0475 / args.reps):.2f} pts)"
    )
    rows = []
    for config in args.configs.split(","):
        for g in (8, 16, 32, 64):
            cells: dict[str, dict] = {}
            for when in ("before", "after"):
                rng = np.random.default_rng(g)
                draw = pools[when].draw(g, args.reps, rng)
                cells[when] = {
                    "margin": _claims(draw, methods[when], config, "margin"),
                    "inside": _claims(draw, methods[when], config, "inside"),
                    "outside": _claims(draw, methods[when], config, "outside"),
                    "coverage": _coverage(draw, methods[when], config),
                }
            for kind in cells["after"]["margin"]:
                power_at = "outside" if kind.endswith("worse") else "inside"
                cover = cells["after"]["coverage"]["kl" if kind.startswith("kl") else "dnll"]
                cover_before = cells["before"]["coverage"][
                    "kl" if kind.startswith("kl") else "dnll"
                ]
                rows.append(
                    {
                        "config": config,
                        "kind": kind,
                        "windows": g,
                        "type-I before": f"{100 * cells['before']['margin'][kind].mean():.1f}%",
                        "after": f"{100 * cells['after']['margin'][kind].mean():.1f}%",
                        "power before": f"{100 * cells['before'][power_at][kind].mean():.0f}%",
                        "after ": f"{100 * cells['after'][power_at][kind].mean():.0f}%",
                        "90% cover before": f"{100 * cover_before:.1f}%",
                        "after  ": f"{100 * cover:.1f}%",
                    }
                )
    print(hs.summary(rows))
    print(
        "\nsequential (--until-decided, looks every 4 windows, "
        "Pocock-type spending of 90% of alpha)"
    )
    seq_rows = []
    for config in args.configs.split(","):
        for g in (16, 32, 64):
            rng = np.random.default_rng(100 + g)
            draw = pools["after"].draw(g, args.reps, rng)
            mu_k = draw.pool.mean(f"{config}/kl")
            k = draw.series(f"{config}/kl", scale=KL / mu_k)
            below = hs.rate(hs.sequential_claims(draw, k, KL, True))[0]
            worse = hs.rate(hs.sequential_claims(draw, k, KL, False))[0]
            seq_rows.append(
                {
                    "config": config,
                    "windows": g,
                    "kl below: type-I": f"{100 * below:.1f}%",
                    "kl worse: type-I": f"{100 * worse:.1f}%",
                }
            )
    print(hs.summary(seq_rows))


if __name__ == "__main__":
    main()
