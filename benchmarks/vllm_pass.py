"""quantscope's accuracy pass in vLLM against vLLM's own prefill, and against the only path
vLLM's API offers for a prompt's full distribution (``prompt_logprobs=-1``), on the same
windows of the bundled model and text, in one run on one server.

Run: .venv/bin/python benchmarks/vllm_pass.py [--config bf16+engine=vllm] [--tokens 4096]

Prints prompt tokens per second of: vLLM's own prefill (every window as a completion with
``max_tokens=1`` and no log-probs, the same number in flight as the pass keeps), quantscope's
pass (the same requests, scored in the server by its plug-in, compared with the reference in
this process), and ``prompt_logprobs=-1`` on the first ``--naive-tokens`` tokens of the first
window (it is about a thousand times slower: a whole window would take minutes); the ratios
to vLLM's prefill (the goal: quantscope ≥ 0.5×); and the largest difference between the
true token's log-probability from quantscope's pass and from vLLM's ``prompt_logprobs=0`` on the
first window (quantscope's alone and batched; vLLM's own alone against batched, the scale of
its own batch variance).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from quantscope import backends, evaluate
from quantscope.backends.vllm import BACKEND
from quantscope.config import DataSpec, ServeSpec, model_spec, parse_config
from quantscope.data import TextSource, bundled_text, make_windows, tokenize
from quantscope.evaluate import served
from quantscope.models import load_tokenizer, resolve


async def _prefill(model, windows, in_flight: int) -> float:
    """Seconds vLLM takes to prefill every window (``max_tokens=1``, no log-probs)."""
    gate = asyncio.Semaphore(in_flight)
    async with served._session() as session:

        async def one(row) -> None:
            body = {"model": model.name, "prompt": [int(t) for t in row], "max_tokens": 1}
            async with gate:
                await served._post(session, model, body)

        start = time.perf_counter()
        await asyncio.gather(*(one(row) for row in windows.ids))
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="bf16+engine=vllm")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--naive-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=2, help="best of this many timings each")
    parser.add_argument("--eager", action="store_true", help="serve without torch.compile")
    args = parser.parse_args()

    spec = model_spec(None)
    files = resolve(spec)
    tokenizer = load_tokenizer(files, spec)
    data = DataSpec(tokens=args.tokens, context=args.context)
    encode = lambda t: tokenizer(t)["input_ids"]  # noqa: E731
    ids = tokenize(TextSource("bundled", bundled_text("eval")), encode, data)
    windows = make_windows(ids, args.context, data.stride)
    prompt_tokens = int(windows.ids.size)
    print(
        f"{len(windows.ids)} windows of {args.context} tokens ({prompt_tokens} prompt tokens, "
        f"{windows.n_scored} scored), {served.IN_FLIGHT} in flight"
    )
    base_config = parse_config("fp32")
    base = backends.get(base_config).load(files, spec, base_config, "cpu").model
    ref = evaluate.reference_pass(base, windows, 256, 4)
    del base

    config = parse_config(args.config)
    serve = ServeSpec(eager=args.eager)  # the naive path asks for every log-prob: allow it
    loaded = BACKEND.serve(files, spec, config, "cpu", serve, 1024, ("--max-logprobs", "-1"))
    model = loaded.model
    print(f"{config.display}: {loaded.library}; started in {loaded.load_s:.0f} s")
    try:
        asyncio.run(_prefill(model, windows, served.IN_FLIGHT))  # warm-up
        own = ours = float("inf")
        for _ in range(args.reps):  # interleaved, best of each
            own = min(own, asyncio.run(_prefill(model, windows, served.IN_FLIGHT)))
            start = time.perf_counter()
            stats = served.compare_served(model, windows, ref.cursor(), 4)
            ours = min(ours, time.perf_counter() - start)
        piece = [int(t) for t in windows.ids[0][: args.naive_tokens]]
        body = {"model": model.name, "prompt": piece, "max_tokens": 1, "prompt_logprobs": -1}
        start = time.perf_counter()
        model.post("/v1/completions", body, timeout=3600)
        naive = time.perf_counter() - start
        first = int(windows.score_from[0])  # window 0's scored tokens start here
        alone = served.compare_served(model, windows.head(1), ref.cursor(), 1, in_flight=1)
        own_alone = asyncio.run(_true_logprobs(model, windows, 1))[0][first - 1 :]
        own_batched = asyncio.run(_true_logprobs(model, windows, served.IN_FLIGHT))[0][first - 1 :]
    finally:
        model.close()
    rows = [
        ("vLLM's own prefill (max_tokens=1)", prompt_tokens / own),
        ("quantscope's pass in vLLM", prompt_tokens / ours),
        (f"prompt_logprobs=-1 ({len(piece)} tokens)", len(piece) / naive),
    ]
    print(f"\n{'path':<40}{'prompt tok/s':>14}{'vs prefill':>12}")
    for name, rate in rows:
        print(f"{name:<40}{rate:14.1f}{rate / rows[0][1]:11.3f}×")
    verdict = "ok" if rows[1][1] >= 0.5 * rows[0][1] else "below the 0.5× goal"
    print(f"\nquantscope / prefill: {rows[1][1] / rows[0][1]:.2f}× ({verdict})")
    n = len(own_alone)
    gaps = (
        np.abs(-alone.nll - own_alone).max(),
        np.abs(-stats.nll[:n] - own_alone).max(),
        np.abs(own_batched - own_alone).max(),
    )
    print(
        "largest |log p(true token)| difference on window 0 from vLLM's prompt_logprobs for it "
        f"alone: quantscope's pass on it alone {gaps[0]:.1e}; quantscope's batched pass "
        f"{gaps[1]:.1e}; vLLM's own prompt_logprobs with {served.IN_FLIGHT} in flight "
        f"{gaps[2]:.1e}"
    )
    print(f"mean KL to the fp32 reference: {stats.kl.mean():.5f}")


async def _true_logprobs(model, windows, in_flight: int) -> list[np.ndarray]:
    """vLLM's own ``prompt_logprobs=0`` of the first ``in_flight`` windows, sent together."""
    async with served._session() as session:

        async def one(row) -> np.ndarray:
            body = {"model": model.name, "prompt": [int(t) for t in row], "max_tokens": 1}
            answer = await served._post(session, model, {**body, "prompt_logprobs": 0})
            found = answer["choices"][0]["prompt_logprobs"][1:]
            return np.array(
                [d[str(int(t))]["logprob"] for d, t in zip(found, row[1:], strict=True)]
            )

        return list(await asyncio.gather(*(one(row) for row in windows.ids[:in_flight])))


if __name__ == "__main__":
    main()
