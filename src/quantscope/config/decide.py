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
        parts = [f"ppl={self.ppl:g}%" if self.ppl is not None else "",
                 f"kl={self.kl:g}" if self.kl is not None else "",
                 f"acc={self.acc:g}" if self.acc is not None else ""]  # fmt: skip
        return ",".join(p for p in parts if p)


def _number(key: str, raw: str, percent_ok: bool) -> float:
    text = raw.strip()
    if text.endswith("%"):
        if not percent_ok:
            raise UserError(f"--margin {key}={raw}: {key} takes a plain number ({_MARGIN_HELP}).")
        text = text[:-1]
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--margin {key}={raw} is not a number ({_MARGIN_HELP}).") from None
    if not (value > 0 and math.isfinite(value)):
        raise UserError(f"--margin {key}={raw} must be a positive number ({_MARGIN_HELP}).")
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
        found[key] = _number(key, raw, percent_ok=key in ("ppl", "acc"))
    return Margins(**found)


def parse_percent(text: str | float | None, option: str) -> float | None:
    """``2%`` or ``2`` → 2.0 (percent)."""
    if text is None:
        return None
    return _number(option, str(text), percent_ok=True)


@dataclass(frozen=True)
class Budget:
    """What ``recommend`` must respect: the perplexity increase (%, judged by its one-sided
    upper confidence bound), weight memory (MB), decode throughput (tokens/s, judged by the
    slowest timed repetition), the margins, and whether to prefer the smallest or fastest."""

    max_ppl_increase: float | None = None
    max_mb: float | None = None
    min_decode_tps: float | None = None
    margins: Margins = field(default_factory=Margins)
    prefer: str = "size"

    def __post_init__(self) -> None:
        if self.prefer not in ("size", "speed"):
            raise UserError(f"--prefer takes size or speed, got '{self.prefer}'.")
        for name, value in (("--max-mb", self.max_mb), ("--min-decode-tps", self.min_decode_tps)):
            if value is not None and not value > 0:
                raise UserError(f"{name} must be a positive number, got {value}.")
