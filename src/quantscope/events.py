"""What long-running work tells its caller while it works: stages, progress, outcomes.

The runner, sensitivity, search and recovery report through an :class:`Events`; the command
line draws progress bars from them, the Python API logs them (:class:`LogEvents`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from quantscope.results import Outcome

log = logging.getLogger("quantscope")


class Events(Protocol):
    """A stage starts (with its size, when known), advances, or a config's outcome is known."""

    def stage(self, label: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...

    def outcome(self, outcome: Outcome) -> None: ...


class LogEvents:
    """Events that only log (the default for the Python API)."""

    def stage(self, label: str, total: int | None) -> None:
        log.info("%s", label)

    def advance(self, n: int) -> None:
        return None

    def outcome(self, outcome: Outcome) -> None:
        log.info("%s: %s %s", outcome.config, outcome.status.value, outcome.reason)
