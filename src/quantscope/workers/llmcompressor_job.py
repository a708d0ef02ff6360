"""One llm-compressor job, run inside its own environment (``quantscope.toolenv``), never
imported by quantscope itself: ``python llmcompressor_job.py job.json result.json``.

The job names the baseline folder, the recipe (llm-compressor's YAML, written by
``quantscope.backends.llmc.recipe``: the one place a recipe is spelled), the calibration rows
(token ids, already cut by quantscope) and the folder to save the compressed-tensors
checkpoint in. The result is the seconds ``oneshot`` took and the versions that made it.
Only the standard library is imported at the top, so collecting this file elsewhere is safe.
"""

from __future__ import annotations

import json
import sys
import time


def main(job_path: str, result_path: str) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(job_path, encoding="utf-8") as handle:
        job = json.load(handle)
    if not torch.accelerator.is_available():
        # llm-compressor 0.14's AWQ pins its cached activations in page-locked memory before
        # each smoothing search (pipelines/cache.py), which needs a GPU; on a CPU-only torch
        # it raises "Cannot access accelerator device". Pinning only speeds copies to a GPU.
        from llmcompressor.pipelines import cache

        cache.IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None
    torch.manual_seed(0)
    dtype = getattr(torch, job["dtype"])
    trust = bool(job.get("trust_remote_code"))
    tokenizer = AutoTokenizer.from_pretrained(job["model"], trust_remote_code=trust)
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=dtype, trust_remote_code=trust)
    rows = job["rows"]
    dataset = None
    if rows:
        mask = [[1] * len(r) for r in rows]
        dataset = Dataset.from_dict({"input_ids": rows, "attention_mask": mask})
    start = time.perf_counter()
    oneshot(
        model=model,
        dataset=dataset,
        recipe=job["recipe"],
        max_seq_length=max((len(r) for r in rows), default=16),
        num_calibration_samples=max(len(rows), 1),
        shuffle_calibration_samples=False,
    )
    seconds = time.perf_counter() - start
    model.save_pretrained(job["out"], save_compressed=True)
    tokenizer.save_pretrained(job["out"])
    from importlib.metadata import version

    names = ("llmcompressor", "compressed-tensors", "transformers", "torch")
    result = {"quantize_s": seconds, "versions": {n: version(n) for n in names}}
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
