"""The accuracy passes: the baseline's reference pass and the streamed comparison.

Memory stays flat in the length of the text and of the window: hidden states live one batch
of windows at a time, logits ``_ROWS`` rows at a time (``evaluate.scoring``), and only
per-token scalars (and the baseline's top-k log-probs) are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import numpy as np
import torch

from quantscope.config.kv import KvSpec
from quantscope.data import Windows
from quantscope.evaluate.scoring import Rows, Scratch, scored_logits
from quantscope.metrics import stats
from quantscope.metrics.divergence import (
    first_max_first,
    kl_full,
    kl_head_tail,
    kl_topk,
    tail_part,
)
from quantscope.reference import Cursor, Reference
from quantscope.token_values import TokenValues

Advance = Callable[[int], None]
# Rows of (rows, V) log-probs computed at once (32 × a 49k vocabulary in float32: 6.3 MB): on
# AVX-512/AMX the bf16 comparison runs at 0.92× the raw forward (64 rows: 0.84×; benchmarks/
# accuracy_pass.py); pieces under glibc's mmap threshold (21 rows) grew a 4k window's heap 1.1 GB.
_ROWS = 32


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
    bad: np.ndarray  # the config's logits held NaN or ±inf at this token
    kl_exact: np.ndarray | None = None

    def subset(self, mask: np.ndarray) -> TokenStats:
        """The tokens where ``mask`` (N,) is true."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v[mask] for k, v in values.items() if v is not None})


Batch = list[tuple[Rows, torch.Tensor]]


def _row_chunks(batch: Batch) -> Iterator[tuple[tuple[Rows, torch.Tensor], slice]]:
    """Each window's rows, ``_ROWS`` at a time: ``((logits, targets), rows)``."""
    for logits, targets in batch:
        for start in range(0, len(logits), _ROWS):
            yield (logits, targets), slice(start, start + _ROWS)


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
    cast, probs = Scratch(), Scratch()
    with torch.no_grad():
        for batch in scored_logits(model, windows, batch_size):
            parts = []
            for (logits, targets), rows in _row_chunks(batch):
                x = cast.as_float(logits[rows])  # (r, V)
                lse = torch.logsumexp(x, dim=-1, keepdim=True)  # log p = x − lse
                if generator is None:
                    generator = torch.Generator(x.device).manual_seed(seed)
                k = min(topk, x.shape[-1])
                m = tail_samples if k < x.shape[-1] else 0
                values, ids = x.topk(k, dim=-1)  # (r, k): the order of the log-probs
                ids = first_max_first(x, ids)
                rest, tail = tail_part(x, lse, ids, m, generator, probs.get(x))  # (r,), (r, m)
                found = (
                    (x.gather(-1, targets[rows][:, None]) - lse).squeeze(-1),
                    values - lse,
                    ids.to(torch.int32),
                    rest,
                    tail.to(torch.int32),
                    x.gather(-1, tail) - lse,
                )
                parts.append(Reference(*(t.cpu().numpy() for t in found)))
            advance(sum(len(t) for _, t in batch))
            yield Reference.concat(parts)


def reference_pass(
    model: Any, windows: Windows, topk: int, batch_size: int, **options: Any
) -> Reference:
    """The whole reference in memory (for tests and small texts; runs stream to disk)."""
    chunks = reference_chunks(model, windows, topk, batch_size, **options)
    return Reference.concat(list(chunks))


def compare_pass(
    model: Any,
    windows: Windows,
    reference: Reference | Cursor,
    batch_size: int,
    advance: Advance = _noop,
    baseline: Any | None = None,
    kv: KvSpec | None = None,
    stop: Callable[[TokenStats], bool] | None = None,
) -> TokenStats:
    """Score ``model`` against the reference, token by token, one batch of windows at a time.

    ``stop``: asked after each batch with the tokens scored so far; the pass ends when it
    says so (a run that stops once its verdicts are resolved).

    ``reference`` is read front to back (a :class:`Cursor` streams it from disk). With
    ``baseline`` (exact mode) the baseline model runs side by side and the KL is also
    computed over the full vocabulary. ``kv``: the text goes through that KV cache in chunks
    (``evaluate.scoring``).
    """
    cursor = reference.cursor() if isinstance(reference, Reference) else reference
    out: dict[str, list[np.ndarray]] = {f.name: [] for f in fields(TokenStats)}
    cast = Scratch()
    base_iter = scored_logits(baseline, windows, batch_size) if baseline is not None else None
    with torch.no_grad():
        for batch in scored_logits(model, windows, batch_size, kv):
            base_chunks = _row_chunks(next(base_iter)) if base_iter is not None else None
            for (logits, targets), rows in _row_chunks(batch):
                x = cast.as_float(logits[rows])  # (r, V)
                lse = torch.logsumexp(x, dim=-1, keepdim=True)  # (r, 1): log p = x - lse
                ref = cursor.take(x.shape[0])
                found = gather_rows(x, lse, reference_ids(targets[rows], ref))
                for name, value in compare_gathered(found, ref).items():
                    out[name].append(value)
                if base_chunks is not None:
                    (base_logits, _), _ = next(base_chunks)
                    x_b = base_logits[rows].float()  # (r, V), normalised as x is: KL 0 for equals
                    lp_b = x_b - torch.logsumexp(x_b, dim=-1, keepdim=True)
                    out["kl_exact"].append(kl_full(lp_b, x - lse).double().cpu().numpy())
            advance(sum(len(t) for _, t in batch))
            if stop is not None and stop(stats_of(out)):
                break
    return stats_of(out)


def stats_of(out: dict[str, list[np.ndarray]]) -> TokenStats:
    return TokenStats(**{name: np.concatenate(parts) for name, parts in out.items() if parts})


class Gathered(NamedTuple):
    """What the comparison needs of r rows of logits: log-probs at :func:`reference_ids`
    (r, 1 + k + m), argmax (r,), non-finite rows (r,). An engine computes these beside its
    logits (``workers/vllm_plugin.py``); the rest is :func:`compare_gathered`."""

    lp: torch.Tensor
    argmax: torch.Tensor
    bad: torch.Tensor


def reference_ids(targets: torch.Tensor, ref: Reference) -> torch.Tensor:
    """The ids a comparison needs (r, 1 + k + m): true token, the reference's top k, tail."""
    dev = targets.device
    tops = torch.from_numpy(ref.topk_ids).to(dev).long()
    tails = torch.from_numpy(ref.tail_ids).to(dev).long()
    return torch.cat([targets[:, None].long(), tops, tails], dim=-1)


def gather_rows(x: torch.Tensor, lse: torch.Tensor, ids: torch.Tensor) -> Gathered:
    """:class:`Gathered` of r rows of logits ``x`` (r, V) whose log-normaliser is ``lse``
    (r, 1): only the needed log-probs are formed, so the vocabulary is read twice per row
    (logsumexp, max) and never written."""
    # max's indices are argmax's (the first maximum), in one pass instead of two; NaN or +inf
    # anywhere in a row makes its log-normaliser non-finite: free to check
    return Gathered(x.gather(-1, ids) - lse, x.max(-1).indices, ~torch.isfinite(lse.squeeze(-1)))


def compare_gathered(g: Gathered, ref: Reference) -> dict[str, np.ndarray]:
    """Per-token comparisons of r rows of a config (:class:`Gathered`) with r rows of the
    reference."""
    dev = g.lp.device
    k = ref.topk_ids.shape[-1]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(dev)

    lp_true = g.lp[:, 0].double()  # (r,)
    top_q, tail_q = g.lp[:, 1 : 1 + k], g.lp[:, 1 + k :]
    top_b, rest_b, tail_b = t(ref.topk_lp), t(ref.rest_lp), t(ref.tail_lp)
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
        "agree": (g.argmax.to(dev) == t(ref.topk_ids[:, 0]).long()).cpu().numpy(),
        "bad": g.bad.cpu().numpy(),
        "dp": np.exp(lp_true.cpu().numpy())
        - np.exp(base_lp),  # one exp for both: exact 0 for equal
    }


NONFINITE = ("nonfinite_tokens", "nonfinite_share", "nonfinite_first_window")


def accuracy_metrics(ts: TokenStats, clusters: np.ndarray) -> dict[str, float]:
    """Every accuracy number of the table, with its uncertainty, from per-token arrays.

    The KL columns use the exact per-token KL when the run computed it (exact mode), else the
    reference cache's estimate; ``kl_cache_mean`` and ``kl_lower_mean`` are always reported.
    A config whose logits held NaN or inf at any scored token (fp16 overflow) gets no
    accuracy numbers at all — never an average over the tokens that survived — only the share
    of such tokens and the first window where one occurred.
    """
    if ts.bad.any():
        first = int(np.flatnonzero(ts.bad)[0])
        return {
            "tokens": float(len(ts.bad)),
            "windows": float(len(np.unique(clusters))),
            "nonfinite_tokens": float(ts.bad.sum()),
            "nonfinite_share": float(ts.bad.mean()),
            "nonfinite_first_window": float(clusters[first]),
        }
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
        "windows": float(len(np.unique(clusters))),
        "clusters": float(ppl.clusters),  # windows evened out (metrics.stats.blocks)
        "ppl": ppl.value,
        "ppl_se": ppl.se,
        "base_ppl": base_ppl.value,
        "dppl_log": ratio.value,
        "dppl_log_se": ratio.se,
        "dppl_log_skew": ratio.skew,
        "dppl_log_kurtosis": ratio.kurtosis,
        "dppl_pct": 100.0 * math.expm1(ratio.value),
        "dppl_pct_se": 100.0 * math.exp(ratio.value) * ratio.se,
        "kl_mean": kl.value,
        "kl_se": kl.se,
        "kl_skew": kl.skew,
        "kl_kurtosis": kl.kurtosis,
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


def token_values(ts: TokenStats, clusters: np.ndarray) -> TokenValues:
    """What is kept of a pass per token for paired comparisons (exact KL when computed)."""
    kl = ts.kl if ts.kl_exact is None else ts.kl_exact
    return TokenValues(ts.nll, ts.base_nll, kl, ts.agree, clusters)


def per_source_metrics(
    windows: Windows, ts: TokenStats, clusters: np.ndarray
) -> dict[str, dict[str, float]]:
    """Accuracy per text source when there are several (the run's row is their token-weighted
    mean: every token counts once, whichever source it came from)."""
    if len(windows.sources) < 2:
        return {}
    owner = windows.token_sources()
    return {
        name: accuracy_metrics(ts.subset(owner == i), clusters[owner == i])
        for i, name in enumerate(windows.sources)
    }


POSITION_EDGES = (0, 128, 512, 2048, 8192)  # bucket starts; the last runs to the window's end


def position_buckets(positions: np.ndarray, context: int) -> list[tuple[str, np.ndarray]]:
    """The tokens of each position bucket that has any: ``(label, mask (N,))``. The buckets
    partition the tokens; labels read ``"128-512"``, the last ending at the context.

    >>> [label for label, _ in position_buckets(np.array([1, 5, 200, 600]), 1024)]
    ['0-128', '128-512', '512-1024']
    """
    starts = [e for e in POSITION_EDGES if e < context]
    out = []
    for i, low in enumerate(starts):
        high = starts[i + 1] if i + 1 < len(starts) else context
        mask = (positions >= low) & (positions < high)
        if mask.any():
            out.append((f"{low}-{high}", mask))
    return out


def by_position_metrics(
    windows: Windows, ts: TokenStats, clusters: np.ndarray
) -> dict[str, dict[str, float]]:
    """Accuracy per bucket of position within the window (how much context the model had),
    each with its window-clustered uncertainty; empty when only one bucket has tokens."""
    parts = position_buckets(windows.positions(), windows.ids.shape[1])
    if len(parts) < 2:
        return {}
    return {label: accuracy_metrics(ts.subset(m), clusters[m]) for label, m in parts}
