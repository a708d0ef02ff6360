"""KV-cache bytes and speed at depth, for several caches in one invocation: the numbers a
``+kv=`` run stores (``kv_bytes@D``, ``prefill_tps@D``, ``decode_tps@D``), measured alone,
without the accuracy pass, so a quiet machine gives clean speeds.

Run: .venv/bin/python benchmarks/kv_depth.py [--configs 'fp32+kv=dynamic,...'] [--depths 0,1k,4k,8k]
     [--prefill 128] [--steps 16]

Prints one row per config and depth: cache MiB measured and by the formula, its share of the
first config's cache, and prefill and decode tokens/s with that many tokens cached.
"""

from __future__ import annotations

import argparse

DEFAULT = (
    "fp32+kv=dynamic,fp32+kv=hqq-int8,fp32+kv=quanto-int4,bf16+kv=dynamic,"
    "bf16+kv=quanto-int4,gguf[qtype=F16]+kv=f16,gguf[qtype=F16]+kv=q8_0,"
    "gguf[qtype=F16]+kv=q4_0"
)


def main() -> None:
    from quantscope import backends, evaluate, models
    from quantscope.config import model_spec, parse_config_list
    from quantscope.specs import parse_depths

    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default=DEFAULT)
    parser.add_argument("--depths", default="0,1k,4k,8k")
    parser.add_argument("--prefill", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    spec = model_spec(None)
    files = models.resolve(spec)
    vocab = len(models.load_tokenizer(files, spec))
    depths = parse_depths(args.depths) or ()
    first: dict[int, float] = {}
    print(
        f"{'config':34} {'depth':>6} {'KV MiB':>8} {'formula':>8} {'share':>6} "
        f"{'prefill/s':>10} {'decode/s':>9}"
    )
    for config in parse_config_list(args.configs):
        loaded = backends.get(config).load(files, spec, config, "cpu")
        found = evaluate.depth_metrics(
            loaded.model, config.kv, tuple(depths), vocab, args.prefill, args.steps
        )
        for d in depths:
            held = found[f"kv_bytes@{d}"]
            first.setdefault(d, held)
            share = f"{held / first[d]:.2f}" if first[d] else "–"
            pred, pp, tg = (
                found[f"{k}@{d}"] for k in ("kv_bytes_pred", "prefill_tps", "decode_tps")
            )
            print(
                f"{config.name:34} {d:>6} {held / 2**20:>8.2f} {pred / 2**20:>8.2f} "
                f"{share:>6} {pp:>10.1f} {tg:>9.2f}"
            )
        del loaded


if __name__ == "__main__":
    main()
