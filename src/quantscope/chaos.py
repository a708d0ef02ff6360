"""Kill points, for the crash tests: with ``QUANTSCOPE_KILL_AT="PHASE:N"`` (several: comma
separated) this process kills itself with SIGKILL the Nth time it reaches :func:`point`
``PHASE`` — the moments a real crash or ``kill -9`` can land on (loading the baseline,
writing the reference, scoring, storing a result, writing the report). Unset, as always
outside those tests, a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

PHASES = ("baseline-load", "reference-chunk", "scoring-batch", "store-row", "report")
ARTIFACTS = ("gguf-quantize", "gptq-calibration")  # inside the making of a cached artifact


def _targets() -> dict[str, int]:
    found = {}
    for item in filter(None, os.environ.get("QUANTSCOPE_KILL_AT", "").split(",")):
        phase, _, count = item.partition(":")
        if count.isdigit() or not count:  # anything else is not a kill point: ignored
            found[phase] = int(count or 1)
    return found


_AT = _targets()
_seen: Counter[str] = Counter()


def point(phase: str) -> None:
    """A moment a kill may land on (``phase``, one of :data:`PHASES`)."""
    if not _AT:
        return
    _seen[phase] += 1
    if _AT.get(phase) == _seen[phase]:
        os.kill(os.getpid(), signal.SIGKILL)
