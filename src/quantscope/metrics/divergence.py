"""Per-token comparisons of two next-token distributions.

All functions take log-probabilities (already normalised) and return one value per token.
``kl_full`` is exact; ``kl_topk`` works from the baseline's top-k log-probs only (what the
reference cache keeps): it is the KL between the two distributions *coarsened* to the k
baseline-top tokens plus one "rest" bucket. By the data-processing inequality that is a lower
bound of the exact KL, and the gap is p_rest · KL(P_rest‖Q_rest) of the renormalised tails
(zero when the baseline puts no mass outside its top k).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def kl_full(lp_base: torch.Tensor, lp_q: torch.Tensor) -> torch.Tensor:
    """KL(base ‖ q) per row over the full vocabulary. (N, V), (N, V) → (N,)

    >>> p = torch.log(torch.tensor([[0.5, 0.5]])); q = torch.log(torch.tensor([[0.25, 0.75]]))
    >>> round(float(kl_full(p, q)[0]), 6)
    0.143841
    """
    return (lp_base.exp() * (lp_base - lp_q)).sum(-1)


def kl_topk(
    topk_lp_base: torch.Tensor,
    topk_lp_q: torch.Tensor,
    rest_lp_base: torch.Tensor | None = None,
    rest_lp_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Coarsened KL(base ‖ q): the k baseline-top tokens plus one rest bucket. (N, k) → (N,)

    ``topk_lp_q`` holds q's log-probs of the baseline's top-k token ids; ``rest_lp_*`` (N,)
    the log of each distribution's mass outside those ids (see :func:`log_rest`). Without
    them the rest is 1 − Σ top-k, which loses precision when the rest is tiny. float64.

    >>> p = torch.log(torch.tensor([[0.5, 0.3]])); q = torch.log(torch.tensor([[0.4, 0.4]]))
    >>> round(float(kl_topk(p, q)[0]), 6)
    0.025267
    """
    lp_b, lp_q = topk_lp_base.double(), topk_lp_q.double()
    p = lp_b.exp()
    head = (p * (lp_b - lp_q)).sum(-1)
    if rest_lp_base is None:
        rest_lp_base = (1.0 - p.sum(-1)).clamp_min(0.0).log()
    if rest_lp_q is None:
        rest_lp_q = (1.0 - lp_q.exp().sum(-1)).clamp_min(1e-300).log()
    rest_b, rest_q = rest_lp_base.double(), rest_lp_q.double()
    p_rest = rest_b.exp()
    tail = torch.where(p_rest > 0, p_rest * (rest_b - rest_q), 0.0)
    return head + tail


def log_rest(lp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside ``ids``, per row, computed without cancellation.

    (N, V) log-probs, (N, k) ids → (N,); −inf when ``ids`` cover the whole vocabulary.

    >>> lp = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    >>> round(float(log_rest(lp, torch.tensor([[0, 1]])).exp()), 6)
    0.2
    """
    return lp.scatter(-1, ids, float("-inf")).logsumexp(-1)


def true_token_logprob(lp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per row. (N, V), (N,) → (N,)"""
    return lp.gather(-1, targets[:, None]).squeeze(-1)


def chunked_log_softmax(logits: torch.Tensor, rows: int = 1024) -> Iterator[torch.Tensor]:
    """float32 log-softmax of (N, V) logits, ``rows`` rows at a time, to bound memory."""
    for start in range(0, logits.shape[0], rows):
        yield torch.log_softmax(logits[start : start + rows].float(), dim=-1)
