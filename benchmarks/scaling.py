"""Memory and time of an evaluation as the text grows: 4k vs 64k scored tokens.

Run: .venv/bin/python benchmarks/scaling.py [--small 4096] [--large 65536] [--config bf16]
     [--context 512] [--batch-size 4] [--no-compare]

Each length runs in its own process (so each peak is that run's alone): load the fp32
baseline, stream its reference pass to a disk cache, load the config, stream the comparison
pass (``--no-compare``: the reference pass alone). Prints each run's peak resident memory,
seconds per 1k scored tokens and the reference's bytes per token (in memory and on disk), and
the ratios large/small measured in this one invocation. ``--context 8192 --small 16384`` is the
long-window check: logits are made 64 rows at a time, so the peak must not grow with the text
(nor hold a window's 8k × 49k logits).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one(tokens: int, config_name: str, context: int, batch: int, compare: bool) -> dict[str, float]:
    """Run one evaluation of ``tokens`` scored tokens; return its peak RSS and timings."""
    from quantscope import backends, evaluate
    from quantscope.config import DataSpec, model_spec, parse_config
    from quantscope.data import TextSource, bundled_text, make_windows, tokenize
    from quantscope.models import load_tokenizer, resolve
    from quantscope.reference import ReferenceCache

    spec = model_spec(None)
    files = resolve(spec)
    tokenizer = load_tokenizer(files, spec)
    data = DataSpec(tokens=tokens, context=context)
    source = TextSource("bundled", bundled_text("eval"))
    ids = tokenize(source, lambda t: tokenizer(t)["input_ids"], data)
    windows = make_windows(ids, data.context, data.stride)
    base_config, config = parse_config("fp32"), parse_config(config_name)
    base = backends.get(base_config).load(files, spec, base_config, "cpu").model
    with tempfile.TemporaryDirectory() as folder:
        cache = ReferenceCache(Path(folder) / "ref")
        start = time.perf_counter()
        cache.write(evaluate.reference_chunks(base, windows, 256, batch))
        ref_s = time.perf_counter() - start
        info = cache.info()
        del base
        cmp_s = float("nan")
        if compare:
            model = backends.get(config).load(files, spec, config, "cpu").model
            start = time.perf_counter()
            stats = evaluate.compare_pass(model, windows, cache.cursor(), batch)
            cmp_s = time.perf_counter() - start
            assert len(stats.kl) == windows.n_scored
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = windows.n_scored
    return {
        "tokens": n,
        "windows": len(windows.ids),
        "peak_rss_mb": peak_mb,
        "ref_s_per_1k": 1000 * ref_s / n,
        "cmp_s_per_1k": 1000 * cmp_s / n,
        "ref_bytes_per_token": info.get("bytes_per_token", float("nan")),
        "ref_disk_bytes_per_token": info["disk_bytes_per_token"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=4096)
    parser.add_argument("--large", type=int, default=65536)
    parser.add_argument("--config", default="bf16")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--no-compare", action="store_true")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        found = one(args.one, args.config, args.context, args.batch_size, not args.no_compare)
        print(json.dumps(found))
        return
    runs = []
    for tokens in (args.small, args.large):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(tokens),
            "--config",
            args.config,
            "--context",
            str(args.context),
            "--batch-size",
            str(args.batch_size),
        ]
        cmd += ["--no-compare"] if args.no_compare else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        r = runs[-1]
        print(
            f"{r['tokens']:>6} tokens: peak RSS {r['peak_rss_mb']:7.1f} MB, reference "
            f"{r['ref_s_per_1k']:.2f} s/1k tokens, {args.config} pass "
            f"{r['cmp_s_per_1k']:.2f} s/1k; {r['windows']} windows of {args.context}; "
            f"reference {r['ref_bytes_per_token']:,.0f} B/token in memory, "
            f"{r['ref_disk_bytes_per_token']:,.0f} on disk"
        )
    small, large = runs
    print(f"peak memory ratio large/small: {large['peak_rss_mb'] / small['peak_rss_mb']:.3f}")
    print(
        f"time per token ratio large/small: reference "
        f"{large['ref_s_per_1k'] / small['ref_s_per_1k']:.3f}, "
        f"{args.config} pass {large['cmp_s_per_1k'] / small['cmp_s_per_1k']:.3f}"
    )


if __name__ == "__main__":
    main()
