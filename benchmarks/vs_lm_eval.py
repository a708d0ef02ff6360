"""quantscope's full accuracy pass vs lm-evaluation-harness's perplexity, same model and text.

Run: .venv/bin/python benchmarks/vs_lm_eval.py [--tokens 4096] [--max-length 512]

lm-evaluation-harness (a dev extra) runs offline through a local task file on a JSONL copy of
the text, with its rolling windows of ``max_length`` tokens. quantscope uses the same rule:
context = max_length + 1 and stride = max_length (back-to-back windows that share one
token). Prints both perplexities and both wall times, measured in this one run.

With ``--bos`` (default) quantscope also puts the BOS token first, as lm-evaluation-harness
does with its "prefix" token, and the windows are then identical. ``--no-bos`` shows what the
alignment is worth: without BOS the text's first token is context only and every window
starts one token later (measured here: 1.8% lower perplexity on 4,096 tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from quantscope import backends, evaluate
from quantscope.config import DataSpec, model_spec, parse_config
from quantscope.data import TextSource, bundled_text, make_windows, tokenize
from quantscope.models import load_tokenizer, resolve
from quantscope.reference import ReferenceCache

TASK = """task: quantscope_text
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def lm_eval_loglikelihood(folder: Path, doc: Path, max_length: int, batch: int) -> float:
    """Total log-likelihood of the document by lm-evaluation-harness's HF model."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_dir = doc.parent / "tasks"
    task_dir.mkdir()
    (task_dir / "quantscope_text.yaml").write_text(TASK.format(path=doc))
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},dtype=float32,max_length={max_length}",
        tasks=["quantscope_text"],
        task_manager=TaskManager(include_path=str(task_dir)),
        batch_size=batch,
        device="cpu",
        log_samples=True,
    )
    sample = out["samples"]["quantscope_text"][0]
    return float(sample["filtered_resps"][0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--bos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prefix BOS as lm-eval does (the same rule); --no-bos shows the difference",
    )
    args = parser.parse_args()

    spec = model_spec(None)
    files = resolve(spec)
    tokenizer = load_tokenizer(files, spec)
    ids = tokenizer(bundled_text("eval"))["input_ids"][: args.tokens]
    text = tokenizer.decode(ids)
    n_tokens = len(tokenizer(text)["input_ids"])

    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "doc.jsonl"
        doc.write_text(json.dumps({"text": text}) + "\n")
        start = time.perf_counter()
        ll = lm_eval_loglikelihood(files.folder, doc, args.max_length, args.batch_size)
        lm_eval_s = time.perf_counter() - start

        config = parse_config("fp32")
        start = time.perf_counter()
        model = backends.get(config).load(files, spec, config, "cpu").model
        data = DataSpec(tokens=n_tokens, context=args.max_length + 1, stride=args.max_length)
        bos = tokenizer.bos_token_id if args.bos else None  # lm-eval's prefix token
        source = TextSource("doc", text)
        ids_qs = tokenize(source, lambda t: tokenizer(t)["input_ids"], data, prefix=bos)
        windows = make_windows(ids_qs, data.context, data.stride)
        cache = ReferenceCache(Path(tmp) / "ref")
        cache.write(evaluate.reference_chunks(model, windows, 256, args.batch_size))
        ref_s = time.perf_counter() - start
        start = time.perf_counter()
        stats = evaluate.compare_pass(model, windows, cache.cursor(), args.batch_size)
        metrics = evaluate.accuracy_metrics(stats, windows.cluster_ids())
        full_s = time.perf_counter() - start

    ppl_lm_eval = math.exp(-ll / n_tokens)
    ppl_ours, se = metrics["ppl"], metrics["ppl_se"]
    both = ref_s + full_s
    lines = [
        f"text: {n_tokens} tokens; windows of {args.max_length} predicted tokens",
        f"lm-evaluation-harness perplexity (tokens): {ppl_lm_eval:.4f} ({lm_eval_s:.1f} s)",
        f"quantscope perplexity:                     {ppl_ours:.4f} ± {se:.4f}",
        f"difference: {100 * (ppl_ours / ppl_lm_eval - 1):+.3f}%",
        f"quantscope: model load + reference pass {ref_s:.1f} s; "
        f"full comparison pass (ppl + KL + agreement + dp) {full_s:.1f} s",
        f"full pass / lm-eval wall time: {full_s / lm_eval_s:.2f}; "
        f"(load + reference + full pass) / lm-eval: {both / lm_eval_s:.2f}",
        f"quantscope scored {metrics['tokens']:.0f} tokens; lm-eval scored {n_tokens} "
        f"(BOS prefix in quantscope: {args.bos})",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
