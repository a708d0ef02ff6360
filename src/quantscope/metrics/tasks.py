"""Task accuracy compared item by item: flips and McNemar's exact test.

Dutta et al. (2024, "Accuracy is not all you need") show that a quantized model can keep its
average accuracy while many individual answers change; these functions count those changes
and test the paired accuracy difference.

>>> flips([True, True, False, False], [True, False, True, False])
{'correct_to_wrong': 1, 'wrong_to_correct': 1, 'changed': 2, 'n': 4}
>>> round(mcnemar_p(1, 1), 6)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from quantscope.metrics.stats import proportion


def flips(base: Sequence[bool], quant: Sequence[bool]) -> dict[str, int]:
    """Counts of items whose correctness changed from the baseline to the quantized model."""
    if len(base) != len(quant):
        raise ValueError("baseline and quantized results cover different items")
    c2w = sum(1 for b, q in zip(base, quant, strict=True) if b and not q)
    w2c = sum(1 for b, q in zip(base, quant, strict=True) if q and not b)
    return {"correct_to_wrong": c2w, "wrong_to_correct": w2c, "changed": c2w + w2c, "n": len(base)}


def mcnemar_p(correct_to_wrong: int, wrong_to_correct: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of the discordant pairs at 1/2.

    p = min(1, 2 · P(X ≤ min(b, c))), X ~ Binomial(b + c, 1/2). With no discordant pairs the
    models cannot be told apart: p = 1.

    >>> round(mcnemar_p(0, 5), 6)  # 2 · (1/2)^5
    0.0625
    >>> round(mcnemar_p(2, 8), 6)  # 2 · (1 + 10 + 45) / 1024
    0.109375
    """
    n = correct_to_wrong + wrong_to_correct
    if n == 0:
        return 1.0
    k = min(correct_to_wrong, wrong_to_correct)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def compare_answers(base: Sequence[bool], quant: Sequence[bool]) -> dict[str, object]:
    """Accuracy ± se of both, the paired change, flips with the flipped item indices, and
    McNemar's p-value.

    >>> out = compare_answers([True, True, False, True], [True, False, True, True])
    >>> out["accuracy"], out["base_accuracy"], out["correct_to_wrong"], out["mcnemar_p"]
    (0.75, 0.75, 1, 1.0)
    """

    counts = flips(base, quant)
    acc, base_acc = proportion(quant), proportion(base)
    n = max(1, counts["n"])
    return {
        "n": counts["n"],
        "accuracy": acc.value,
        "accuracy_se": acc.se,
        "base_accuracy": base_acc.value,
        "delta": acc.value - base_acc.value,
        "correct_to_wrong": counts["correct_to_wrong"],
        "wrong_to_correct": counts["wrong_to_correct"],
        "flipped_pct": 100.0 * counts["changed"] / n,
        "mcnemar_p": mcnemar_p(counts["correct_to_wrong"], counts["wrong_to_correct"]),
        "c2w_items": [i for i, (b, q) in enumerate(zip(base, quant, strict=True)) if b and not q],
        "w2c_items": [i for i, (b, q) in enumerate(zip(base, quant, strict=True)) if q and not b],
    }
