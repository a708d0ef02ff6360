"""What a decision is judged against: equivalence margins (``--margin ppl=1%,kl=0.01,acc=1``)
and a deployment budget (``quantscope recommend --max-ppl-increase 2% --max-mb 170``).

>>> parse_margins("ppl=2%,kl=0.01,acc=1")
Margins(ppl=2.0, kl=0.01, acc=1.0)
>>> parse_margins("ppl=0.5")
Margins(ppl=0.5, kl=None, acc=None)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from quantscope.errors import UserError

_MARGIN_HELP = (
    "ppl in percent (ppl=1%), kl in nats per token (kl=0.01), acc in percentage points of "
    "task accuracy (acc=1)"
)


@dataclass(frozen=True)
class Margins:
    """Equivalence margins: perplexity change in %, mean KL in nats/token, task accuracy in
    points. None: that metric is not judged."""

    ppl: float | None = None
    kl: float | None = None
    acc: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.ppl, self.kl, self.acc))

    def text(self) -> str:
        parts = [
            f"ppl={self.ppl:g}%" if self.ppl is not None else "",
            f"kl={self.kl:g}" if self.kl is not None else "",
            f"acc={self.acc:g}" if self.acc is not None else "",
        ]
        return ",".join(p for p in parts if p)


def _number(raw: str, given: str, percent_ok: bool, help: str) -> float:
    """A positive finite number from ``raw`` (``given``: how the user wrote it, for the
    sentence a bad value gets; ``help``: what the option takes)."""
    text = raw.strip()
    if text.endswith("%"):
        if not percent_ok:
            raise UserError(f"{given}: that takes a plain number ({help}).")
        text = text[:-1]
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{given} is not a number ({help}).") from None
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"{given} must be a positive number ({help}).")
    return value


def parse_margins(text: str | None) -> Margins:
    """``ppl=1%,kl=0.01,acc=1`` → :class:`Margins` (empty text: no margins)."""
    if not text or not text.strip():
        return Margins()
    found: dict[str, float] = {}
    for part in text.split(","):
        key, sep, raw = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("ppl", "kl", "acc"):
            raise UserError(
                f"--margin takes metric=value pairs for ppl, kl and acc, got '{part.strip()}' "
                f"({_MARGIN_HELP})."
            )
        found[key] = _number(raw, f"--margin {key}={raw}", key in ("ppl", "acc"), _MARGIN_HELP)
    return Margins(**found)


def parse_percent(text: str | float | None, option: str) -> float | None:
    """``2%`` or ``2`` → 2.0 (percent); the one parser of a percentage option (``option``
    names it in the sentence a bad value gets).

    >>> parse_percent("2%", "--max-ppl-increase"), parse_percent(0.5, "max_ppl_increase")
    (2.0, 0.5)
    """
    if text is None:
        return None
    return _number(str(text), f"{option} {text}", True, "a percentage like 2% or 0.5")


@dataclass(frozen=True, kw_only=True)
class Budget:
    """One deployment budget, for ``recommend`` and ``search`` alike: the perplexity increase
    (%, judged by its one-sided upper confidence bound), mean KL (nats/token), weight memory
    (MB), decode throughput (tokens/s, judged by the slowest timed repetition), the margins,
    and whether to prefer the smallest or the fastest config. None: not limited.

    >>> Budget(max_kl=0.05, max_ppl_increase=2.0).excess(kl=0.025, dppl_pct=3.0)
    1.5
    """

    max_ppl_increase: float | None = None
    max_kl: float | None = None
    max_mb: float | None = None
    min_decode_tps: float | None = None
    margins: Margins = field(default_factory=Margins)
    prefer: str = "size"

    def __post_init__(self) -> None:
        if self.prefer not in ("size", "speed"):
            raise UserError(f"--prefer takes size or speed, got '{self.prefer}'.")
        for name in ("max_ppl_increase", "max_kl", "max_mb", "min_decode_tps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}.")

    @property
    def limits_accuracy(self) -> bool:
        """Whether the budget limits accuracy (KL or perplexity)."""
        return self.max_kl is not None or self.max_ppl_increase is not None

    def excess(self, kl: float, dppl_pct: float, scale: float = 1.0) -> float:
        """How far the accuracy is over budget, as the largest ratio to a limit (≤ 1: met);
        ``scale`` tightens the limits (< 1) when emulation proved optimistic."""
        ratios = [0.0]
        if self.max_kl is not None:
            ratios.append(kl / (self.max_kl * scale))
        if self.max_ppl_increase is not None:
            ratios.append(dppl_pct / (self.max_ppl_increase * scale))
        return max(ratios)
