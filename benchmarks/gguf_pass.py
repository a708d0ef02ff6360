"""quantscope's GGUF pass against llama.cpp's own ``llama-perplexity``, side by side.

Run: .venv/bin/python benchmarks/gguf_pass.py [--qtype Q8_0] [--tokens 8192] [--context 512]

Both evaluate the same GGUF file (the bundled model re-quantized by llama.cpp) on the same
token windows — llama.cpp's own tokenization of the bundled text, cut into non-overlapping
chunks of ``--context`` tokens of which those after the first half are scored, exactly as
``llama-perplexity`` does — with the same number of threads. ``llama-perplexity`` is built
from the llama.cpp tree inside the llama-cpp-python source package of the installed version
(so the same revision), with the Makefile's build options (``LLAMA_CMAKE_ARGS``,
``LLAMA_CFLAGS``), once, into the cache. Prints tokens/s of both (best of ``--reps``
interleaved runs), of llama-perplexity with flash attention on (its CPU default; quantscope
keeps it off, see ``backends/gguf.py``) and of quantscope's former one-window-at-a-time pass,
their ratios, and both perplexities with their errors.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quantscope import backends, evaluate
from quantscope.cache import cache_dir
from quantscope.config import model_spec, parse_config
from quantscope.data import Windows, bundled_text
from quantscope.models import resolve

AMX_OFF = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" if platform.machine() == "x86_64" else ""


def llama_perplexity() -> Path:
    """``llama-perplexity`` of the installed llama-cpp-python's llama.cpp revision (built once)."""
    import llama_cpp

    version = llama_cpp.__version__
    cmake_args = os.environ.get("LLAMA_CMAKE_ARGS", "-DGGML_NATIVE=ON").split()
    cflags = os.environ.get("LLAMA_CFLAGS", AMX_OFF)
    cpu = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = next((line for line in cpu.splitlines() if line.startswith("flags")), "")
    key = hashlib.sha256(f"{cmake_args} {cflags} {flags}".encode()).hexdigest()[:12]
    build = cache_dir() / f"llama.cpp-{version}-tools-{key}"
    binary = build / "bin" / "llama-perplexity"
    if binary.is_file():
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        fetch = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            "-d",
            tmp,
            f"llama-cpp-python=={version}",
        ]
        subprocess.run(fetch, check=True)
        with tarfile.open(next(Path(tmp).glob("*.tar.gz"))) as tar:
            tar.extractall(tmp, filter="data")
        source = next(Path(tmp).glob("*/vendor/llama.cpp"))
        env = {**os.environ, "CFLAGS": cflags, "CXXFLAGS": cflags}
        start = time.perf_counter()
        subprocess.run(
            [
                "cmake",
                "-S",
                str(source),
                "-B",
                str(build),
                "-G",
                "Ninja",
                "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_OPENSSL=OFF",
                *cmake_args,
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            ["cmake", "--build", str(build), "--target", "llama-perplexity"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        print(f"built llama-perplexity {version} in {time.perf_counter() - start:.0f} s")
    return binary


def chunk_windows(path: Path, text: str, tokens: int, context: int) -> Windows:
    """llama-perplexity's chunks: llama.cpp's tokens, BOS first in each chunk if the model
    adds one, the tokens after the first half of each chunk scored."""
    import llama_cpp
    from llama_cpp import Llama

    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    ids = vocab.tokenize(text.encode(), add_bos=True, special=False)
    n = min(tokens, len(ids)) // context
    chunks = np.asarray(ids[: n * context], dtype=np.int64).reshape(n, context)
    if llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(vocab.model)):
        chunks[:, 0] = vocab.token_bos()
    # its logits at positions first .. n_ctx-2 (first = n_ctx/2) score the tokens after them
    return Windows(chunks, np.full(n, context // 2 + 1), "llama-perplexity-chunks")


def run_llama_perplexity(
    binary: Path, path: Path, text: str, windows: Windows, threads: int, flash: str
):
    """Tokens/s (from llama.cpp's own prompt-eval timing), wall seconds and ``(ppl, se)``."""
    n, context = windows.ids.shape
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write(text)
        f.flush()
        command = [
            str(binary),
            "-m",
            str(path),
            "-f",
            f.name,
            "-c",
            str(context),
            "-b",
            str(4 * context),
            "--chunks",
            str(n),
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "-fa",
            flash,
        ]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
    log = done.stdout + done.stderr
    if done.returncode:
        raise SystemExit(f"llama-perplexity failed:\n{log[-2000:]}")
    ppl, se = map(float, re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", log).groups())
    m = re.search(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", log)
    eval_s, evaluated = (float(m.group(1)) / 1000, int(m.group(2))) if m else (wall, n * context)
    return evaluated / eval_s, wall, (ppl, se)


def perplexity(nll: np.ndarray, windows: int) -> tuple[float, float]:
    """exp(mean nll) and its se by llama-perplexity's formula (tokens as independent)."""
    mean = float(nll.mean())
    return float(np.exp(mean)), float(np.exp(mean) * nll.std() / np.sqrt(len(nll) - 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--qtype", default="Q8_0")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2, help="best of this many timings each")
    args = parser.parse_args()
    threads = torch.get_num_threads()

    spec = model_spec(None)
    files = resolve(spec)
    config = parse_config(f"gguf[qtype={args.qtype}]")
    model = backends.get(config).load(files, spec, config, "cpu").model
    path = model.path
    text = bundled_text("eval")
    windows = chunk_windows(path, text, args.tokens, args.context)
    n_windows, context = windows.ids.shape
    processed = windows.ids.size
    print(
        f"{path.name}: {n_windows} chunks of {context} tokens, those after the first half "
        f"scored, {threads} threads"
    )
    binary = llama_perplexity()

    ref = evaluate.reference_pass(model, windows, 256, args.batch_size)  # warm-up and reference
    best: dict[str, float] = {}  # tokens/s, best of --reps interleaved runs of each
    runs = {}
    for _ in range(args.reps):
        start = time.perf_counter()
        stats = evaluate.compare_pass(model, windows, ref, args.batch_size)
        timings = {"ours": processed / (time.perf_counter() - start)}
        start = time.perf_counter()
        for row in windows.ids.tolist():  # the former pass: one window per call, all logits
            model._run(row, keep=False)
        timings["before"] = processed / (time.perf_counter() - start)
        for flash in ("off", "on"):
            runs[flash] = run_llama_perplexity(binary, path, text, windows, threads, flash)
            timings[flash] = runs[flash][0]
        best = {k: max(v, best.get(k, 0.0)) for k, v in timings.items()}
    theirs_tps, theirs_wall, (ppl_l, se_l) = best["off"], runs["off"][1], runs["off"][2]
    ppl_q, se_q = perplexity(stats.nll, n_windows)

    rows = [
        ("llama-perplexity -fa off (as quantscope)", theirs_tps),
        ("llama-perplexity -fa on (its CPU default)", best["on"]),
        ("quantscope comparison pass (batched)", best["ours"]),
        ("quantscope former pass (one window a call)", best["before"]),
    ]
    print(f"{'pass':<46}{'tokens/s':>10}{'ratio':>8}")
    for name, tps in rows:
        print(f"{name:<46}{tps:10.1f}{tps / theirs_tps:8.2f}")
    print(f"llama-perplexity wall time {theirs_wall:.1f} s (loading included)")
    print(
        f"perplexity: llama-perplexity {ppl_l:.4f} ± {se_l:.4f} (-fa on: {runs['on'][2][0]:.4f})"
        f", quantscope {ppl_q:.4f} ± {se_q:.4f}, difference {100 * (ppl_q / ppl_l - 1):+.3f}%"
    )
    print(f"mean KL of the pass against its own reference: {stats.kl.mean():.2e} (0: same logits)")


if __name__ == "__main__":
    main()
