"""The GPU path, exercised: on a CUDA machine, one config of every backend measured on the GPU
(the bundled model and text), with the peak GPU memory of each (torch.cuda.max_memory_allocated,
reset per config) and how the capability rules class it, printed as one table.

    make gpu-check          # installs the CUDA build of torch, then runs this
    python benchmarks/gpu_check.py [--tokens 2048] [--store gpu-check.sqlite]

On a machine without CUDA it says so in one sentence and exits 1 (nothing to check).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# one config per backend (and the GPU-only kernels): every backend's CUDA path runs once
CONFIGS = (
    "fp16",
    "bf16",
    "bnb-int8",
    "bnb-nf4[compute_dtype=bf16]",
    "hqq[bits=4,group=64]",
    "quanto-int8",
    "quanto-fp8",
    "torchao-int8wo",
    "torchao-int4wo",
    "gptq[bits=4,group=128]",
    "gguf[qtype=Q8_0]",
    "llmc-w8a8",  # made in llm-compressor's environment (built with the CUDA torch there)
    "llmc-w8a8+engine=vllm",  # served by PyPI's CUDA vLLM in its own environment
)
COLUMNS = (
    "config",
    "status",
    "support",
    "weights MB",
    "peak GPU MB",
    "KL",
    "Δppl %",
    "decode tok/s",
    "note",
)


def rows(report: Any, support: dict[str, str]) -> list[dict[str, str]]:
    """One row per config of a finished run: its status, support level, weight and peak GPU
    memory, KL, Δppl and decode speed (or why it did not run)."""
    out = []
    for o in report.outcomes:
        m = o.result.metrics if o.result is not None else {}

        def f(key: str, spec: str, m: dict[str, Any] = m) -> str:
            v = m.get(key)
            return "–" if v is None else format(v, spec)

        note = o.reason or (o.result.invalid if o.result is not None else "")
        out.append(
            dict(
                zip(
                    COLUMNS,
                    (
                        o.config,
                        o.status.value,
                        support.get(o.config, "?"),
                        f("weight_mb", ".1f"),
                        f("peak_gpu_mb", ".0f"),
                        f("kl_mean", ".3g"),
                        f("dppl_pct", "+.2f"),
                        f("decode_tps", ".1f"),
                        note,
                    ),
                    strict=True,
                )
            )
        )
    return out


def table(found: list[dict[str, str]]) -> str:
    """A Markdown table (for the terminal and the closing note alike)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in found]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--store", default="gpu-check.sqlite")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu-check: torch sees no CUDA GPU here (a CPU build, or no driver); run it on a "
            "GPU machine with make gpu-check."
        )
        return 1
    import quantscope
    from quantscope import capability
    from quantscope.config import parse_config_list

    device = capability.this_device("cuda")
    support = {
        c.display: capability.support(c, device).level for c in parse_config_list(args.configs)
    }
    print(
        f"{torch.cuda.get_device_name()} (capability {device.capability[0]}."
        f"{device.capability[1]}), torch {torch.__version__}"
    )
    report = quantscope.run(
        configs=args.configs, device="cuda", tokens=args.tokens, store=args.store, progress=False
    )
    print(table(rows(report, support)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
