"""Tokens and time a run that stops each config once decided saves, against the fixed run.

Run: .venv/bin/python benchmarks/sequential.py [--tokens 4096] [--margin ppl=1%,kl=0.02]
     [--spending pocock,linear,obrien-fleming]

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
    parser.add_argument("--spending", default="pocock", help="comma list: one run each")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per look")
    args = parser.parse_args()
    margins = parse_margins(args.margin)
    real_cache = Path(os.environ.get("QUANTSCOPE_CACHE") or Path.home() / ".cache" / "quantscope")
    common = {
        "configs": args.configs,
        "tokens": args.tokens,
        "speed_reps": 1,
        "max_new_tokens": 4,
        "margin": args.margin,
        "batch_size": args.batch_size,
    }
    found = {}
    designs = [("fixed", {})] + [
        (kind, {"until_decided": True, "spending": kind}) for kind in args.spending.split(",")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in designs:
            folder = Path(tmp) / name
            folder.mkdir()
            (folder / "models").symlink_to(real_cache / "models", target_is_directory=True)
            os.environ["QUANTSCOPE_CACHE"] = str(folder)
            found[name] = _timed_run(folder, **common, **extra)
    fixed, wall_fixed = found.pop("fixed")
    print(
        f"bundled model, {args.tokens} tokens, margins {margins.text()}, "
        f"batch size {args.batch_size} (a look after every batch)"
    )
    for kind, (seq, wall_seq) in found.items():
        _table(fixed, seq, margins, kind)
        print(
            f"wall time: fixed {wall_fixed:.1f} s, until decided ({kind}) {wall_seq:.1f} s "
            f"({wall_seq / wall_fixed:.2f}×); accuracy passes "
            f"{sum(r.metrics['eval_s'] for r in fixed.results):.1f} s vs "
            f"{sum(r.metrics['eval_s'] for r in seq.results):.1f} s\n"
        )


def _table(fixed, seq, margins, kind: str) -> None:
    print(f"until decided with {kind} spending (looks after every batch of windows)")
    print(
        f"{'config':<10}{'tokens':>7}{'seq':>7}{'share':>7}  {'metric':<6}"
        f"{'fixed verdict':>14}{'seq verdict':>14}{'pass s':>8}{'seq':>6}  last look"
    )
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
        last = s.meta["sequential"]["looks"][-1]
        for metric in ("ppl", "kl"):
            a, b = judged["fixed"].get((r.config, metric)), judged["seq"].get((r.config, metric))
            if a is None or b is None:
                continue
            mark = "≠" if a.verdict.verdict not in (b.verdict.verdict, "not resolved") else ""
            print(
                f"{r.config:<10}{total:>7,}{used:>7,}{used / total:>7.0%}  {metric:<6}"
                f"{a.verdict.verdict:>14}{b.verdict.verdict:>14}"
                f"{r.metrics['eval_s']:>8.1f}{s.metrics['eval_s']:>6.1f}  "
                f"level {last['level']:.3g} {mark}"
            )


if __name__ == "__main__":
    main()
