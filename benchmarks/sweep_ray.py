"""The same study on the local executor and on Ray (a head and a second node on 127.0.0.1, one
CPU each: 2 workers on this 2-core machine): wall time of each and the ratio Ray/local, in one
run, and the largest difference between the two executors' numbers (every metric but speed,
time and peak memory). The goal is ≤ 1.15× for time, where Ray cannot help (two cores, one
model), and 0 for the numbers: they must not depend on which executor measured them.

Run: .venv/bin/python benchmarks/sweep_ray.py [--tokens 512] [--configs fp32,bf16,...]

Ray runs in a network namespace of its own with only loopback (``unshare --net``, as root), so
it never advertises or uses the machine's network address. Each executor gets a fresh cache
folder and database: both pay for converting the bundled model and for the reference pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


TIMING = ("tps", "_s", "peak_")  # measured anew by each executor


def measure(
    executor: str, tokens: int, configs: list[str], address: str | None
) -> tuple[float, dict[str, dict[str, float]]]:
    from quantscope.sweeps import Executor, run_sweep
    from quantscope.sweeps.sweep_file import parse_sweep

    folder = Path(tempfile.mkdtemp(prefix=f"qs-{executor}-"))
    os.environ["QUANTSCOPE_CACHE"] = str(folder / "cache")
    study = parse_sweep(
        {
            "models": ["bundled"],
            "configs": configs,
            "store": str(folder / "r.sqlite"),
            "settings": {"tokens": tokens, "context": 256, "stride": 128},
        },
        folder,
    )
    start = time.perf_counter()
    report = run_sweep(study, executor=Executor(executor), address=address)
    seconds = time.perf_counter() - start
    failed = [o.reason for r in report.runs for o in r.outcomes if o.status.value != "measured"]
    assert not failed, failed
    rows = {
        o.config: {k: v for k, v in o.result.metrics.items() if not any(t in k for t in TIMING)}
        for r in report.runs
        for o in r.outcomes
        if o.result is not None
    }
    return seconds, rows


def largest_difference(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> dict:
    """The largest relative difference between two executors' numbers, and where it is."""
    worst = {"relative": 0.0, "config": "", "metric": "", "values": None}
    for config, row in a.items():
        for metric, value in row.items():
            other = b[config][metric]
            if value == other or not isinstance(value, float):
                continue
            relative = abs(value - other) / max(abs(value), abs(other), 1e-300)
            if relative > worst["relative"]:
                worst = {
                    "relative": relative,
                    "config": config,
                    "metric": metric,
                    "values": [value, other],
                }
    return worst


def inside(tokens: int, configs: list[str]) -> None:
    from ray_cluster_check import RAY, start_cluster

    local_s, local = measure("local", tokens, configs, None)  # before Ray touches this process
    address = start_cluster()
    try:
        ray_s, on_ray = measure("ray", tokens, configs, address)
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
    found = {"ray_s": ray_s, "local_s": local_s, "same": local == on_ray}
    print(json.dumps({**found, "largest": largest_difference(local, on_ray)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--configs", default="fp32,bf16,bnb-int8,rtn[group=64]")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from quantscope.config import split_config_list

    configs = split_config_list(args.configs)
    if args.inside:
        inside(args.tokens, configs)
        return
    me = (
        f"{sys.executable} {Path(__file__).resolve()} --inside --tokens {args.tokens} "
        f"--configs '{args.configs}'"
    )
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        ["unshare", "--net", "sh", "-c", f"ip link set lo up && exec {me}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode:
        sys.exit(done.stdout[-2000:] + done.stderr[-2000:])
    found = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"study: bundled model × {len(configs)} configs ({args.configs}), {args.tokens} tokens")
    print(f"local executor: {found['local_s']:.1f} s")
    print(f"Ray, 2 workers:  {found['ray_s']:.1f} s")
    print(f"ratio Ray/local: {found['ray_s'] / found['local_s']:.2f}x (goal ≤ 1.15x)")
    worst = found["largest"]
    same = "identical" if found["same"] else "DIFFERENT"
    print(f"numbers: {same}; largest relative difference {worst['relative']:.3g}", end="")
    print(f" ({worst['config']} {worst['metric']}: {worst['values']})" if worst["config"] else "")


if __name__ == "__main__":
    main()
