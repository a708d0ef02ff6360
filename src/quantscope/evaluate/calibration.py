"""The calibration pass: exact KL to the baseline on a small slice of training text.

Sensitivity analysis and the mixed-precision search compare many variants of one model on
the same few windows, so the baseline's full log-probabilities are held in memory once
(tokens × vocabulary × 4 bytes: 200 MB for 1,024 tokens of a 49k vocabulary) and every
variant's KL is exact, over the full vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from quantscope.config.kv import KvSpec
from quantscope.data import Windows
from quantscope.evaluate.scoring import scored_logits
from quantscope.metrics import stats


@dataclass
class Calibration:
    """The baseline on the calibration windows, per batch of windows: its probabilities
    ``probs`` (R, V), and per row its negative entropy Σ p·log p and loss (R,) (float64)."""

    windows: Windows
    batch_size: int
    probs: list[torch.Tensor]
    neg_entropy: list[torch.Tensor]
    base_nll: list[torch.Tensor]

    @property
    def tokens(self) -> int:
        return sum(len(t) for t in self.base_nll)


def _batches(model: Any, windows: Windows, batch_size: int, kv: KvSpec | None = None) -> Any:
    """Per batch of windows: (targets (R,), logits (R, V)) of every scored row (through
    ``kv``'s cache in chunks when given)."""
    with torch.no_grad():
        for batch in scored_logits(model, windows, batch_size, kv):
            yield torch.cat([t for _, t in batch]), torch.cat([x[:] for x, _ in batch]).float()


def calibrate(model: Any, windows: Windows, batch_size: int = 4) -> Calibration:
    """Run the baseline over the calibration windows and keep what the KL needs."""
    probs, neg_entropy, nll = [], [], []
    for target, x in _batches(model, windows, batch_size):
        lp = x - torch.logsumexp(x, dim=-1, keepdim=True)  # (R, V)
        p = lp.exp()
        probs.append(p)
        neg_entropy.append((p.double() * lp.double()).sum(-1))
        nll.append(-lp.gather(-1, target[:, None]).squeeze(-1).double())
    return Calibration(windows, batch_size, probs, neg_entropy, nll)


def divergence(model: Any, calib: Calibration, kv: KvSpec | None = None) -> dict[str, float]:
    """Exact mean KL(baseline ‖ model) and the perplexity change on the calibration windows,
    each with its cluster-robust standard error (the window is the cluster).

    With q's logits x, KL = Σ p·log p − Σ p·x + logsumexp(x) (as Σ p = 1): one dot product
    per row and no (R, V) log-probs written. x is centred on its row maximum first, so the
    terms stay small and float32 sums lose no precision that matters.
    """
    kls, nlls = [], []
    for (target, x), p, neg_ent in zip(
        _batches(model, calib.windows, calib.batch_size, kv),
        calib.probs,
        calib.neg_entropy,
        strict=True,
    ):
        x = x - x.amax(dim=-1, keepdim=True)  # (R, V), ≤ 0
        lse = torch.logsumexp(x, dim=-1).double()  # (R,)
        cross = torch.bmm(p[:, None, :], x[:, :, None]).reshape(-1).double()  # Σ p·x (R,)
        kls.append((neg_ent - cross + lse).clamp_min(0.0).cpu().numpy())
        nlls.append((lse - x.gather(-1, target[:, None]).squeeze(-1).double()).cpu().numpy())
    clusters = calib.windows.cluster_ids()
    kl = stats.mean_se(np.concatenate(kls), clusters)
    base_nll = torch.cat(calib.base_nll).cpu().numpy()
    ratio = stats.paired_log_ratio(np.concatenate(nlls), base_nll, clusters)
    return {
        "kl": kl.value,
        "kl_se": kl.se,
        "dppl_pct": 100.0 * math.expm1(ratio.value),
        "dppl_pct_se": 100.0 * math.exp(ratio.value) * ratio.se,
    }
