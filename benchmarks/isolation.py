"""What measuring each config in a process of its own (``--isolate``) costs, per config.

Run: .venv/bin/python benchmarks/isolation.py [--configs bf16,bnb-int8,bnb-nf4] [--tokens 4096]

The bundled model's reference pass is made first (once, in the cache both runs share); then the
same configs are measured twice in this one invocation, each run into a fresh results
database: in this process, then each config in a child process. Prints each run's wall time,
the difference per config, and that as a share of the in-process time; and checks that the
two runs' accuracy numbers are identical.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from quantscope import runner
from quantscope.config import DataSpec, RunSpec, parse_config_list

TIMING = ("tps", "_s", "peak_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="bf16,bnb-int8,bnb-nf4")
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="isolation-"))
    data = DataSpec(tokens=args.tokens)

    def spec(configs: str, store: str, isolate: bool) -> RunSpec:
        return RunSpec(
            configs=parse_config_list(configs),
            data=data,
            store_path=str(folder / store),
            isolate=isolate,
            speed_reps=1,
        )

    runner.run(spec("fp32", "reference.sqlite", False))  # the reference, in the shared cache
    seconds, reports = {}, {}
    for isolate in (False, True):
        start = time.perf_counter()
        reports[isolate] = runner.run(spec(args.configs, f"isolate-{isolate}.sqlite", isolate))
        seconds[isolate] = time.perf_counter() - start
    n = len(reports[False].outcomes)
    extra = (seconds[True] - seconds[False]) / n
    print(f"configs: {args.configs} ({n}), {args.tokens} tokens, bundled model")
    print(f"in this process:        {seconds[False]:7.1f} s  ({seconds[False] / n:.1f} s a config)")
    print(f"each in its own process: {seconds[True]:6.1f} s  ({seconds[True] / n:.1f} s a config)")
    print(f"isolation costs {extra:.1f} s a config ({100 * extra * n / seconds[False]:.0f}%)")
    for a, b in zip(reports[False].results, reports[True].results, strict=True):
        same = {k: v for k, v in a.metrics.items() if not any(t in k for t in TIMING)} == {
            k: v for k, v in b.metrics.items() if not any(t in k for t in TIMING)
        }
        print(f"  {a.config}: accuracy numbers {'identical' if same else 'DIFFER'}")


if __name__ == "__main__":
    main()
