"""A baseline bigger than its memory: the bundled model's reference pass with the baseline
capped at --max-memory (accelerate sends the rest of its layers to disk) against the same
pass in memory — wall time of each, their ratio, and how far apart the two references are.

Run: .venv/bin/python benchmarks/offload.py [--tokens 1024] [--cap 200MiB]

Both passes run in this one process, one after the other, on the same windows.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--cap", default="200MiB")
    args = parser.parse_args()

    from quantscope import backends, evaluate, models
    from quantscope.config import DataSpec, model_spec, parse_placement, precision_config
    from quantscope.data import read_sources, text_windows

    spec = model_spec(None)
    files = models.resolve(spec)
    tokenizer = models.load_tokenizer(files, spec)
    windows, _ = text_windows(
        read_sources(DataSpec(tokens=args.tokens)), tokenizer, DataSpec(tokens=args.tokens)
    )
    base = precision_config(spec.dtype)
    refs, seconds, places = [], [], []
    with tempfile.TemporaryDirectory() as offload:
        capped = dataclasses.replace(
            spec, placement=parse_placement("auto", f"cpu={args.cap}", offload)
        )
        for placed in (spec, capped):
            model = backends.get(base).load(files, placed, base, "cpu").model
            places.append(models.placement_of(model, "cpu"))
            start = time.perf_counter()
            refs.append(evaluate.reference_pass(model, windows, 256, 4))
            seconds.append(time.perf_counter() - start)
            del model
    a, b = refs
    # KL(in-memory ‖ offloaded) over the top-256 log-probs both references keep
    same_ids = bool(np.array_equal(a.topk_ids, b.topk_ids))
    pa = np.exp(a.topk_lp.astype(np.float64))
    kl = float((pa * (a.topk_lp - b.topk_lp)).sum(-1).mean()) if same_ids else float("nan")
    print(f"tokens scored: {windows.n_scored}, cap cpu={args.cap}")
    print(f"placement in memory: {places[0]}; capped: {places[1]}")
    print(
        f"reference pass: in memory {seconds[0]:.1f} s, offloaded {seconds[1]:.1f} s "
        f"(offloaded/in-memory {seconds[1] / seconds[0]:.2f}x)"
    )
    print(
        f"same top-256 ids: {same_ids}; KL over them {kl:.2e}; max |Δ log p(true)| "
        f"{float(np.abs(a.true_lp - b.true_lp).max()):.2e}"
    )


if __name__ == "__main__":
    main()
