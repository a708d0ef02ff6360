"""Tokens and time a run that stops each config once decided saves, against the fixed run.

Run: .venv/bin/python benchmarks/sequential.py [--tokens 4096] [--margin ppl=1%,kl=0.02]

Both runs measure the default configs of the bundled model at the same margins, in this one
process, each in a fresh cache folder (the converted model shared) and a fresh results
database, so each makes its own reference pass: the fixed run in the text's order, the
sequential one (``until_decided``) in a seeded random order. Prints, per config, the tokens
each used, both verdicts per metric (they agree wherever the fixed run resolved unless
marked), the seconds of each accuracy pass, and each run's wall time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from quantscope.config import DEFAULT_CONFIGS, parse_margins
from quantscope.decide import analysis
from quantscope.events import LogEvents
from quantscope.runner import run
from quantscope.specs import run_spec


def _timed_run(folder: Path, **options: object) -> tuple[object, float]:
    start = time.perf_counter()
    report = run(run_spec(store=folder / "results.sqlite", **options), LogEvents())
    return report, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--margin", default="ppl=1%,kl=0.02")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    parser.add_argument("--spending", default="pocock")
    args = parser.parse_args()
    margins = parse_margins(args.margin)
    real_cache = Path(os.environ.get("QUANTSCOPE_CACHE") or Path.home() / ".cache" / "quantscope")
    common = {
        "configs": args.configs,
        "tokens": args.tokens,
        "speed_reps": 1,
        "max_new_tokens": 4,
        "margin": args.margin,
    }
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (
            ("fixed", {}),
            ("until decided", {"until_decided": True, "spending": args.spending}),
        ):
            folder = Path(tmp) / name.replace(" ", "-")
            folder.mkdir()
            (folder / "models").symlink_to(real_cache / "models", target_is_directory=True)
            os.environ["QUANTSCOPE_CACHE"] = str(folder)
            report, wall = _timed_run(folder, **common, **extra)
            found[name] = (report, wall)
    fixed, seq = found["fixed"][0], found["until decided"][0]
    print(
        f"bundled model, {args.tokens} tokens, margins {margins.text()}, "
        f"{args.spending} spending; configs measured in order, each its own accuracy pass"
    )
    head = (
        f"{'config':<10}{'tokens fixed':>13}{'seq':>7}{'share':>7}  {'metric':<6}"
        f"{'fixed verdict':>15}{'seq verdict':>15}{'pass s fixed':>14}{'seq':>7}"
    )
    print(head)
    judged = {
        name: {(j.config, j.metric): j for j in analysis.verdicts(r.results, margins)}
        for name, r in (("fixed", fixed), ("seq", seq))
    }
    by_config = {r.config: r for r in seq.results}
    for r in fixed.results:
        s = by_config.get(r.config)
        if s is None:
            continue
        used, total = int(s.metrics["tokens"]), int(r.metrics["tokens"])
        for metric in ("ppl", "kl"):
            a, b = judged["fixed"].get((r.config, metric)), judged["seq"].get((r.config, metric))
            if a is None or b is None:
                continue
            differs = (
                " (differs)"
                if a.verdict.verdict != b.verdict.verdict and a.verdict.verdict != "not resolved"
                else ""
            )
            print(
                f"{r.config:<10}{total:>13,}{used:>7,}{used / total:>7.0%}  {metric:<6}"
                f"{a.verdict.verdict:>15}{b.verdict.verdict:>15}"
                f"{r.metrics['eval_s']:>14.1f}{s.metrics['eval_s']:>7.1f}{differs}"
            )
    wall_fixed, wall_seq = found["fixed"][1], found["until decided"][1]
    print(
        f"wall time: fixed {wall_fixed:.1f} s, until decided {wall_seq:.1f} s "
        f"({wall_seq / wall_fixed:.2f}×); sum of accuracy passes "
        f"{sum(r.metrics['eval_s'] for r in fixed.results):.1f} s vs "
        f"{sum(r.metrics['eval_s'] for r in seq.results):.1f} s"
    )


if __name__ == "__main__":
    main()
