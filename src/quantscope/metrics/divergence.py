"""Per-token comparisons of two next-token distributions.

All functions take log-probabilities (already normalised) and return one value per token.

- ``kl_full`` is exact (needs both full distributions).
- ``kl_head_tail`` is what the reference cache allows: the baseline's top-k tokens are summed
  exactly, and the rest of the vocabulary (the tail) is estimated from m tokens sampled from
  the baseline's tail distribution. Since Σ_tail p·(log p − log q) = p_rest · E_{x∼P_tail}[log
  p(x) − log q(x)], the estimate is unbiased; its noise averages out over tokens.
- ``kl_topk`` coarsens both distributions to the top-k tokens plus one "rest" bucket: by the
  data-processing inequality a lower bound of the exact KL (the gap is p_rest times the KL of
  the renormalised tails). It is reported as a check on the estimate.
"""

from __future__ import annotations

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


def kl_head_tail(
    topk_lp_base: torch.Tensor,
    topk_lp_q: torch.Tensor,
    rest_lp_base: torch.Tensor,
    tail_lp_base: torch.Tensor,
    tail_lp_q: torch.Tensor,
) -> torch.Tensor:
    """KL(base ‖ q): exact over the top k, importance-sampled over the tail. → (N,), float64

    ``topk_lp_*`` (N, k) log-probs of the baseline's top-k ids under each model;
    ``rest_lp_base`` (N,) log of the baseline's mass outside them; ``tail_lp_*`` (N, m) the
    log-probs of m tail ids drawn from the baseline's tail distribution (m may be 0).

    >>> p = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    >>> q = torch.log(torch.tensor([[0.4, 0.4, 0.2]]))
    >>> exact = float(kl_full(p, q)[0])
    >>> est = kl_head_tail(p[:, :2], q[:, :2], p[:, 2], p[:, 2:], q[:, 2:])  # tail = token 2
    >>> abs(float(est[0]) - exact) < 1e-6
    True
    """
    lp_b, lp_q = topk_lp_base.double(), topk_lp_q.double()
    head = (lp_b.exp() * (lp_b - lp_q)).sum(-1)
    if tail_lp_base.shape[-1] == 0:
        return head
    log_ratio = (tail_lp_base.double() - tail_lp_q.double()).mean(-1)
    return head + rest_lp_base.double().exp() * log_ratio


def sample_tail(
    lp: torch.Tensor, top_ids: torch.Tensor, m: int, generator: torch.Generator
) -> torch.Tensor:
    """m token ids per row drawn (with replacement) from the distribution outside ``top_ids``.

    (N, V) log-probs, (N, k) ids → (N, m) ids. Rows with no tail mass draw any tail id (their
    tail weight is zero, so the draw does not matter).
    """
    probs = lp.exp().scatter(-1, top_ids, 0.0)  # (N, V)
    empty = probs.sum(-1) <= 0
    if empty.any():
        probs[empty] = torch.ones_like(probs[empty]).scatter(-1, top_ids[empty], 0.0)
    return torch.multinomial(probs, m, replacement=True, generator=generator)


def tail_part(
    x: torch.Tensor,
    lse: torch.Tensor,
    top_ids: torch.Tensor,
    m: int,
    generator: torch.Generator,
    scratch: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline's tail at once, from logits ``x`` (N, V) and their log-normaliser ``lse``
    (N, 1): the log of the mass outside ``top_ids`` (N,) and ``m`` ids drawn from it (N, m).

    One probability tensor serves both (made once, the top ids zeroed in place), where
    :func:`log_rest` and :func:`sample_tail` each make their own copy of the vocabulary: on
    the bundled model's 49k vocabulary this is most of the reference pass's own work.
    ``scratch``: a float32 tensor of at least x's shape to hold the probabilities (a pass
    reuses one instead of allocating a vocabulary-sized tensor per piece).

    >>> x = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    >>> rest, ids = tail_part(x, torch.zeros(1, 1), torch.tensor([[0, 1]]), 4,
    ...                       torch.Generator().manual_seed(0))
    >>> round(float(rest.exp()[0]), 6), ids.tolist()
    (0.2, [[2, 2, 2, 2]])
    """
    if scratch is None:
        probs = torch.exp(x - lse)  # (N, V)
    else:
        probs = torch.sub(x, lse, out=scratch[: x.shape[0], : x.shape[1]]).exp_()
    probs.scatter_(-1, top_ids, 0.0)
    mass = probs.sum(-1)
    rest = mass.log()  # −inf where the top ids hold everything
    if m == 0:
        return rest, top_ids[:, :0]
    empty = mass <= 0
    if empty.any():  # no tail mass: any tail id will do (its weight is zero)
        probs[empty] = torch.ones_like(probs[empty]).scatter(-1, top_ids[empty], 0.0)
    return rest, torch.multinomial(probs, m, replacement=True, generator=generator)


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


def first_max_first(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``ids`` (r, k), the top k of ``x`` (r, V), with column 0 the *first* maximum, as the
    comparison's ``max`` finds it: topk orders tied values as it likes, and a model compared
    with itself must agree on every token (bf16 logits tie at the top on ~2% of tokens).

    >>> x = torch.tensor([[0.0, 2.0, 2.0, 1.0]])
    >>> first_max_first(x, torch.tensor([[2, 1]])).tolist()
    [[1, 2]]
    """
    first = x.max(-1).indices  # (r,)
    at = (ids == first[:, None]).int().argmax(-1)  # its column, if among the k
    rows = torch.arange(len(ids), device=ids.device)
    present = ids[rows, at] == first
    swapped = ids.clone()
    swapped[rows[present], at[present]] = ids[present, 0]
    swapped[:, 0] = first  # tied with column 0, so the values keep their order either way
    return swapped
