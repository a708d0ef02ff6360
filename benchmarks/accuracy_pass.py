"""Accuracy-pass throughput against the raw forward pass, and the reference cache's size.

Run: .venv/bin/python benchmarks/accuracy_pass.py [--tokens 4096] [--configs bnb-nf4]

With ``--configs ''`` only the plain forward and the reference pass are timed. Long windows
(logits past 256 MB) fix glibc's mmap threshold (``evaluate.device.steady_heap``);
``--dynamic-heap`` leaves it as glibc has it, so two runs time what fixing it costs.

Prints, measured in this one run on the same windows: tokens/s of the plain forward pass
(what any evaluation must pay), of the reference pass and of the comparison pass, their
ratios, and the reference cache's bytes per scored token (in memory and compressed on disk).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from quantscope import backends, evaluate
from quantscope.config import DEFAULT_CONFIGS, DataSpec, QuantConfig, model_spec, parse_config
from quantscope.data import TextSource, bundled_text, make_windows, tokenize
from quantscope.models import load_tokenizer, resolve


def raw_forward_seconds(model, windows, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for _, ids, _ in windows.batches(batch_size):
            model(input_ids=torch.from_numpy(ids), use_cache=False)
    return time.perf_counter() - start


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS))
    parser.add_argument("--reps", type=int, default=2, help="best of this many timings each")
    parser.add_argument("--dynamic-heap", action="store_true", help="glibc's own mmap threshold")
    args = parser.parse_args()
    if args.dynamic_heap:
        from quantscope.evaluate import scoring

        scoring.steady_heap = lambda: False

    spec = model_spec(None)
    files = resolve(spec)
    tokenizer = load_tokenizer(files, spec)
    data = DataSpec(tokens=args.tokens, context=args.context, stride=args.stride)
    source = TextSource("bundled", bundled_text("eval"))
    ids = tokenize(source, lambda t: tokenizer(t)["input_ids"], data)
    windows = make_windows(ids, args.context, args.stride)
    n, rate, bs = windows.n_scored, "scored tok/s", args.batch_size
    print(f"{n} scored tokens, {len(windows.ids)} windows of {args.context} (stride {args.stride})")

    base_config = parse_config("fp32")
    base = backends.get(base_config).load(files, spec, base_config, "cpu").model
    raw_forward_seconds(base, windows, bs)  # warm-up
    raw_base = ref_s = float("inf")
    for _ in range(args.reps):  # interleaved, best of each
        raw_base = min(raw_base, raw_forward_seconds(base, windows, bs))
        ref, seconds = timed(evaluate.reference_pass, base, windows, 256, bs)
        ref_s = min(ref_s, seconds)
    print(f"raw forward fp32          {n / raw_base:8.1f} {rate}")
    print(f"reference pass fp32       {n / ref_s:8.1f} {rate}  ratio {raw_base / ref_s:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ref.npz"
        ref.save(path)
        disk = path.stat().st_size / n
    print(f"reference cache: {ref.bytes_per_token:.0f} B/token in memory, {disk:.0f} on disk")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS so far {peak:.0f} MB")

    table = []
    for name in filter(None, args.configs.split(",")):
        config: QuantConfig = parse_config(name)
        quant = backends.get(config).load(files, spec, config, "cpu").model
        raw_forward_seconds(quant, windows, bs)  # warm-up (bnb repacks on first use)
        raw_q = cmp_s = float("inf")
        for _ in range(args.reps):  # interleaved, best of each: both see the same noise
            raw_q = min(raw_q, raw_forward_seconds(quant, windows, bs))
            stats, seconds = timed(evaluate.compare_pass, quant, windows, ref, bs)
            cmp_s = min(cmp_s, seconds)
        table.append((name, n / raw_q, n / cmp_s, raw_q / cmp_s))
        exact = evaluate.compare_pass(quant, windows, ref, bs, baseline=base).kl_exact
        assert exact is not None
        cache_kl, exact_kl, lower = stats.kl.mean(), exact.mean(), stats.kl_lower.mean()
        if exact_kl == 0:  # the baseline's own config: both exactly 0
            print(f"  mean KL {name}: from the cache {cache_kl:.5f}, exact 0")
        else:
            print(
                f"  mean KL {name}: from the cache {cache_kl:.5f}, exact {exact_kl:.5f} "
                f"({100 * (cache_kl / exact_kl - 1):+.2f}%); coarse lower bound "
                f"{lower:.5f} ({100 * (lower / exact_kl - 1):+.2f}%)"
            )
        del quant
    print(f"\n{'config':<16}{'raw forward':>14}{'comparison':>14}{'ratio':>8}  (scored tok/s)")
    for name, raw, cmp, ratio in table:
        print(f"{name:<16}{raw:14.1f}{cmp:14.1f}{ratio:8.2f}  {'ok' if ratio >= 0.9 else '< 0.9'}")


if __name__ == "__main__":
    main()
