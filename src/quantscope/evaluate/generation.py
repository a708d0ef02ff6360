"""Greedy generations and log-likelihood scoring of continuations."""

from __future__ import annotations

from typing import Any

import torch

from quantscope.config.kv import KvSpec
from quantscope.evaluate.device import model_device
from quantscope.evaluate.scoring import cache_kwargs


def loglikelihoods(
    model: Any,
    requests: list[tuple[list[int], list[int]]],
    batch_size: int = 8,
    max_length: int = 2048,
) -> list[tuple[float, bool]]:
    """For each ``(context ids, continuation ids)``: log p(continuation | context) and whether
    the continuation is the greedy (argmax) choice at every one of its tokens.

    Requests run in batches, right-padded (a causal model's real positions never see the
    padding); a sequence longer than ``max_length`` keeps its last ``max_length`` tokens.
    """
    device = model_device(model)
    out: list[tuple[float, bool]] = []
    with torch.no_grad():
        for start in range(0, len(requests), batch_size):
            chunk = requests[start : start + batch_size]
            seqs = [(ctx + cont)[-max_length:] for ctx, cont in chunk]
            width = max(len(s) for s in seqs) - 1
            ids = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
            mask = torch.zeros_like(ids)
            for b, seq in enumerate(seqs):
                ids[b, : len(seq) - 1] = torch.tensor(seq[:-1])
                mask[b, : len(seq) - 1] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for b, ((_, cont), seq) in enumerate(zip(chunk, seqs, strict=True)):
                n = len(cont)
                rows = logits[b, len(seq) - 1 - n : len(seq) - 1].float()  # (n, V)
                lp = torch.log_softmax(rows, dim=-1)
                target = torch.tensor(cont, device=lp.device)
                ll = float(lp.gather(-1, target[:, None]).sum())
                out.append((ll, bool((rows.argmax(-1) == target).all())))
    return out


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt, through the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(prompt)["input_ids"]]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: tuple[str, ...],
    max_new_tokens: int,
    kv: KvSpec | None = None,
) -> list[dict[str, Any]]:
    """Greedy continuations of each prompt: ``{"prompt", "ids", "text", "tokens"}`` each;
    with ``kv`` (a torch cache) decoding through that cache."""
    device = model_device(model)
    outputs = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                **cache_kwargs(model, kv),
            )
        new = [int(i) for i in out[0, ids.shape[1] :].tolist()]
        text = tokenizer.decode(new, skip_special_tokens=True)
        tokens = [tokenizer.decode([i]) for i in new]  # per-token text, for highlighting
        outputs.append({"prompt": prompt, "ids": new, "text": text, "tokens": tokens})
    return outputs


def first_difference(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where two generations differ; None when identical.

    >>> first_difference([1, 2, 3], [1, 2, 4]), first_difference([1, 2], [1, 2])
    (2, None)
    >>> first_difference([1, 2], [1, 2, 3])
    2
    """
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
