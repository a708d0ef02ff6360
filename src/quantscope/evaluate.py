"""The passes: baseline reference, streamed comparison, efficiency, generations.

Memory stays flat in the length of the text: logits live one batch of windows at a time and
only per-token scalars (and the baseline's top-k log-probs) are kept.
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from quantscope.backends import LoadedModel
from quantscope.data import Windows
from quantscope.metrics import stats
from quantscope.metrics.divergence import (
    kl_full,
    kl_head_tail,
    kl_topk,
    log_rest,
    sample_tail,
    true_token_logprob,
)
from quantscope.reference import Cursor, Reference

Advance = Callable[[int], None]
_ROWS = 1024  # rows of (rows, V) log-probs computed at once


def _noop(_: int) -> None:
    return None


@dataclass
class TokenStats:
    """Per-token results of one config, in scoring order. All (N,).

    ``base_nll`` and ``rest_mass`` come from the reference (the baseline's loss and its mass
    outside the top k), so the metrics need nothing else.
    """

    base_nll: np.ndarray
    rest_mass: np.ndarray
    nll: np.ndarray
    kl: np.ndarray
    kl_lower: np.ndarray
    kl_tail_var: np.ndarray
    agree: np.ndarray
    dp: np.ndarray
    kl_exact: np.ndarray | None = None

    def subset(self, mask: np.ndarray) -> TokenStats:
        """The tokens where ``mask`` (N,) is true."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v[mask] for k, v in values.items() if v is not None})


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (where inputs must go)."""
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _accepts(model: Any, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def scored_logits(
    model: Any, windows: Windows, batch_size: int
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per batch of windows, per window: ``(logits (n, V), targets (n,))``, scored rows only.

    The logits are views into the batch's output (no copy).

    Where the model supports ``logits_to_keep``, the output head runs only on the positions
    a batch scores (half of them when stride = context/2): fewer FLOPs and less memory.
    """
    device = model_device(model)
    trim = _accepts(model, "logits_to_keep")
    context = windows.ids.shape[1]
    for _, ids_np, score_from in windows.batches(batch_size):
        ids = torch.from_numpy(ids_np).to(device)  # (B, C)
        keep = context - int(score_from.min()) + 1 if trim else context
        with torch.inference_mode():
            extra = {"logits_to_keep": keep} if trim else {}
            logits = model(input_ids=ids, use_cache=False, **extra).logits  # (B, keep, V)
        first = context - keep  # window position of logits[:, 0]
        # position j-1 predicts token j
        yield [
            (logits[b, start - 1 - first : -1], ids[b, start:])
            for b, start in enumerate(score_from.tolist())
        ]


def _row_chunks(
    batch: list[tuple[torch.Tensor, torch.Tensor]],
) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], slice]]:
    """Each window's rows, ``_ROWS`` at a time: ``((logits, targets), rows)``."""
    for logits, targets in batch:
        for start in range(0, logits.shape[0], _ROWS):
            yield (logits, targets), slice(start, start + _ROWS)


def _log_probs(
    batch: list[tuple[torch.Tensor, torch.Tensor]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(targets (r,), log-probs (r, V))`` of each window, ``_ROWS`` rows at a time.

    Computed as x − logsumexp(x), exactly as the comparison pass does, so a model compared
    with its own reference gets a KL of exactly zero.
    """
    for (logits, targets), rows in _row_chunks(batch):
        x = logits[rows].float()
        yield targets[rows], x - torch.logsumexp(x, dim=-1, keepdim=True)


def reference_chunks(
    model: Any,
    windows: Windows,
    topk: int,
    batch_size: int,
    advance: Advance = _noop,
    tail_samples: int = 64,
    seed: int = 0,
) -> Iterator[Reference]:
    """The baseline's reference, one chunk per batch of windows (see ``quantscope.reference``)."""
    generator: torch.Generator | None = None
    with torch.inference_mode():
        for batch in scored_logits(model, windows, batch_size):
            if generator is None:
                generator = torch.Generator(batch[0][0].device).manual_seed(seed)
            parts = []
            for targets, lp in _log_probs(batch):
                k = min(topk, lp.shape[-1])
                m = tail_samples if k < lp.shape[-1] else 0
                values, ids = lp.topk(k, dim=-1)  # (r, k)
                tail = sample_tail(lp, ids, m, generator) if m else ids[:, :0]  # (r, m)
                found = (
                    true_token_logprob(lp, targets),
                    values,
                    ids.to(torch.int32),
                    log_rest(lp, ids),
                    tail.to(torch.int32),
                    lp.gather(-1, tail),
                )
                parts.append(Reference(*(t.cpu().numpy() for t in found)))
            advance(sum(len(t) for _, t in batch))
            yield Reference.concat(parts)


def reference_pass(
    model: Any,
    windows: Windows,
    topk: int,
    batch_size: int,
    advance: Advance = _noop,
    tail_samples: int = 64,
    seed: int = 0,
) -> Reference:
    """The whole reference in memory (for tests and small texts; runs stream to disk)."""
    chunks = reference_chunks(model, windows, topk, batch_size, advance, tail_samples, seed)
    return Reference.concat(list(chunks))


def compare_pass(
    model: Any,
    windows: Windows,
    reference: Reference | Cursor,
    batch_size: int,
    advance: Advance = _noop,
    baseline: Any | None = None,
) -> TokenStats:
    """Score ``model`` against the reference, token by token, one batch of windows at a time.

    ``reference`` is read front to back (a :class:`Cursor` streams it from disk). With
    ``baseline`` (exact mode) the baseline model runs side by side and the KL is also
    computed over the full vocabulary.
    """
    cursor = reference.cursor() if isinstance(reference, Reference) else reference
    out: dict[str, list[np.ndarray]] = {f.name: [] for f in fields(TokenStats)}
    base_iter = scored_logits(baseline, windows, batch_size) if baseline is not None else None
    with torch.inference_mode():
        for batch in scored_logits(model, windows, batch_size):
            base_chunks = _row_chunks(next(base_iter)) if base_iter is not None else None
            for (logits, targets), rows in _row_chunks(batch):
                x = logits[rows].float()  # (r, V)
                lse = torch.logsumexp(x, dim=-1, keepdim=True)  # (r, 1): log p = x - lse
                ref = cursor.take(x.shape[0])
                for name, value in _compare_rows(x, lse, targets[rows], ref).items():
                    out[name].append(value)
                if base_chunks is not None:
                    (base_logits, _), _ = next(base_chunks)
                    lp_b = torch.log_softmax(base_logits[rows].float(), dim=-1)
                    out["kl_exact"].append(kl_full(lp_b, x - lse).double().cpu().numpy())
            advance(sum(len(t) for _, t in batch))
    return TokenStats(**{name: np.concatenate(parts) for name, parts in out.items() if parts})


def _compare_rows(
    x: torch.Tensor, lse: torch.Tensor, targets: torch.Tensor, ref: Reference
) -> dict[str, np.ndarray]:
    """Per-token comparisons of r rows of logits ``x`` (r, V), whose log-normaliser is ``lse``
    (r, 1), with r rows of the reference. Only the needed log-probs are formed (gathers), so
    the vocabulary is read twice per row (logsumexp, argmax) and never written."""
    dev = x.device

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(dev)

    def lp_at(ids: torch.Tensor) -> torch.Tensor:
        return x.gather(-1, ids) - lse

    ids, tail_ids = t(ref.topk_ids).long(), t(ref.tail_ids).long()  # (r, k), (r, m)
    lp_true = lp_at(targets[:, None]).squeeze(-1).double()  # (r,)
    top_q, top_b, rest_b = lp_at(ids), t(ref.topk_lp), t(ref.rest_lp)
    tail_b, tail_q = t(ref.tail_lp), lp_at(tail_ids)
    kl = kl_head_tail(top_b, top_q, rest_b, tail_b, tail_q)
    # Variance of each token's sampled tail term: p_rest² · Var(log p − log q) / m.
    m = tail_b.shape[-1]
    ratio_var = (tail_b.double() - tail_q.double()).var(-1) if m > 1 else torch.zeros_like(kl)
    tail_var = rest_b.double().exp() ** 2 * ratio_var / max(m, 1)
    # q's mass outside the baseline's top k, by subtraction in float64: exact enough for this
    # diagnostic bound (an error of ~1e-7 in the rest mass, floored at 1e-12).
    rest_q = (1.0 - top_q.double().exp().sum(-1)).clamp_min(1e-12).log()
    low = kl_topk(top_b, top_q, rest_b, rest_q)
    base_lp = ref.true_lp.astype(np.float64)
    return {
        "base_nll": -base_lp,
        "rest_mass": np.exp(ref.rest_lp.astype(np.float64)),
        "nll": (-lp_true).cpu().numpy(),
        "kl": kl.cpu().numpy(),
        "kl_lower": low.cpu().numpy(),
        "kl_tail_var": tail_var.cpu().numpy(),
        "agree": (x.argmax(-1) == ids[:, 0]).cpu().numpy(),
        "dp": lp_true.exp().cpu().numpy() - np.exp(base_lp),
    }


def accuracy_metrics(ts: TokenStats, clusters: np.ndarray) -> dict[str, float]:
    """Every accuracy number of the table, with its uncertainty, from per-token arrays.

    The KL columns use the exact per-token KL when the run computed it (exact mode), else the
    reference cache's estimate; ``kl_cache_mean`` and ``kl_lower_mean`` are always reported.
    """
    base_nll = ts.base_nll
    ppl = stats.perplexity(ts.nll, clusters)
    base_ppl = stats.perplexity(base_nll, clusters)
    ratio = stats.paired_log_ratio(ts.nll, base_nll, clusters)
    per_token_kl = ts.kl if ts.kl_exact is None else ts.kl_exact
    kl = stats.mean_se(per_token_kl, clusters)
    median, p90, p99 = stats.quantiles(per_token_kl, (0.5, 0.9, 0.99))
    agree = stats.proportion(ts.agree, clusters)
    dp = stats.mean_se(ts.dp, clusters)
    out = {
        "tokens": float(ppl.n),
        "windows": float(ppl.clusters),
        "ppl": ppl.value,
        "ppl_se": ppl.se,
        "base_ppl": base_ppl.value,
        "dppl_log": ratio.value,
        "dppl_log_se": ratio.se,
        "dppl_pct": 100.0 * math.expm1(ratio.value),
        "dppl_pct_se": 100.0 * math.exp(ratio.value) * ratio.se,
        "kl_mean": kl.value,
        "kl_se": kl.se,
        "kl_median": median,
        "kl_p90": p90,
        "kl_p99": p99,
        "kl_max": float(np.max(per_token_kl)),
        "kl_cache_mean": float(ts.kl.mean()),
        # the cache estimate's own sampling error on the mean (tail samples), not the text's
        "kl_sampling_se": float(np.sqrt(ts.kl_tail_var.sum()) / len(ts.kl)),
        "kl_lower_mean": float(ts.kl_lower.mean()),
        "kl_exact": float(ts.kl_exact is not None),
        "top1_agree": agree.value,
        "top1_agree_se": agree.se,
        "dp_mean": dp.value,
        "dp_mean_se": dp.se,
        "dp_rms": float(np.sqrt(np.mean(ts.dp**2))),
        "ref_tail_mass_mean": float(np.clip(ts.rest_mass, 0.0, 1.0).mean()),
    }
    return out


# ---------------------------------------------------------------- efficiency


def weight_footprint(loaded: LoadedModel) -> dict[str, float]:
    """Bytes of weights as held (params, buffers, quantization state), and bits per weight.

    Call it after a forward pass: some kernels repack weights at first use.

    Each tensor's bytes count once (tied embeddings count once). ``params`` is
    the logical weight count: quantized linears count in_features × out_features, however
    their data is packed.
    """
    model = loaded.model
    modules = dict(model.named_modules())
    seen: set[tuple[int, int]] = set()

    def nbytes(t: torch.Tensor) -> int:
        if t.device.type == "meta":
            return 0
        # A tensor's own bytes (weights loaded from safetensors may be views into one
        # shared buffer, so storage sizes would overcount); tied weights share data_ptr.
        key = (t.data_ptr(), t.nbytes)
        if key in seen:
            return 0
        seen.add(key)
        return int(t.nbytes)

    linear_bytes = linear_params = 0
    quant_ptrs: set[int] = set()
    state = loaded.state()
    for name, logical in loaded.quantized.items():
        module = modules[name]
        tensors = [module.weight, *state.get(name, [])]
        linear_bytes += sum(nbytes(t) for t in tensors)
        linear_params += logical
        quant_ptrs.add(module.weight.data_ptr())
    total_bytes, params = linear_bytes, linear_params
    for p in list(model.parameters()) + list(model.buffers()):
        is_quant = p.data_ptr() in quant_ptrs
        counted = nbytes(p)
        total_bytes += counted
        if counted and not is_quant and isinstance(p, torch.nn.Parameter):
            params += p.numel()
    return {
        "weight_bytes": float(total_bytes),
        "weight_mb": total_bytes / 2**20,
        "params": float(params),
        "bits_per_weight": 8.0 * total_bytes / params,
        "linear_bits_per_weight": 8.0 * linear_bytes / linear_params if linear_params else math.nan,
        "quantized_linears": float(len(loaded.quantized)),
    }


def prefill_speed(model: Any, vocab: int, length: int, reps: int, seed: int) -> list[float]:
    """Tokens per second of one forward pass over ``length`` tokens, after one warm-up."""
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, length), generator=gen).to(device)
    rates = []
    with torch.inference_mode():
        for rep in range(reps + 1):
            _sync(device)
            start = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            _sync(device)
            if rep:  # rep 0 is the warm-up
                rates.append(length / (time.perf_counter() - start))
    return rates


def decode_speed(
    model: Any, vocab: int, prompt: int, steps: int, reps: int, seed: int
) -> list[float]:
    """Tokens per second of greedy one-token steps with the KV cache, after one warm-up."""
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, prompt), generator=gen).to(device)
    name = "cache" if _accepts(model, "cache") else "past_key_values"  # transformers ≥ 5.2x
    rates = []
    with torch.inference_mode():
        for rep in range(reps + 1):
            out = model(input_ids=ids, use_cache=True)
            past, nxt = getattr(out, name), out.logits[:, -1:].argmax(-1)  # (1, 1)
            _sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                out = model(input_ids=nxt, use_cache=True, **{name: past})
                past, nxt = getattr(out, name), out.logits[:, -1:].argmax(-1)
            _sync(device)
            if rep:
                rates.append(steps / (time.perf_counter() - start))
    return rates


def speed_metrics(model: Any, vocab: int, reps: int, seed: int) -> dict[str, float]:
    """Prefill (128 tokens) and decode (24 steps after a 64-token prompt) throughput."""
    out: dict[str, float] = {}
    for label, rates in (
        ("prefill_tps", prefill_speed(model, vocab, 128, reps, seed)),
        ("decode_tps", decode_speed(model, vocab, 64, 24, reps, seed)),
    ):
        median, low, high = stats.median_spread(rates)
        out.update({label: median, f"{label}_min": low, f"{label}_max": high})
    return out


class PeakMemory:
    """Peak resident memory of this process (sampled every 10 ms) and of the GPU, in MiB.

    >>> with PeakMemory() as peak:
    ...     _ = bytearray(1)
    >>> peak.rss_mb > 0
    True
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.rss_mb = 0.0
        self.gpu_mb = math.nan
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        process = psutil.Process()
        while True:
            self.rss_mb = max(self.rss_mb, process.memory_info().rss / 2**20)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            self.gpu_mb = torch.cuda.max_memory_allocated() / 2**20


# ---------------------------------------------------------------- log-likelihood


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
    with torch.inference_mode():
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


# ---------------------------------------------------------------- generations


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
    model: Any, tokenizer: Any, prompts: tuple[str, ...], max_new_tokens: int
) -> list[dict[str, Any]]:
    """Greedy continuations of each prompt: ``{"prompt", "ids", "text", "tokens"}`` each."""
    device = model_device(model)
    outputs = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
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
