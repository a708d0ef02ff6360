"""What long-running work tells its caller while it works: stages, progress, outcomes.

The runner, sensitivity, search and recovery report through an :class:`Events`; the command
line draws rich progress bars from them, the Python API tqdm bars (:class:`BarEvents`) or
only logs them (:class:`LogEvents`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

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


class BarEvents:
    """One progress bar per stage, quantscope's own (``quantscope · STAGE``): a widget in
    Jupyter when ipywidgets is installed, text on stderr elsewhere (``tqdm.auto``); a line per
    finished config. The default of the Python API (``progress=False`` turns it off)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def stage(self, label: str, total: int | None) -> None:
        from tqdm.auto import tqdm

        from quantscope.quiet import Screen

        self.close()
        self.bar = tqdm(
            total=total, desc=f"quantscope · {label}", file=Screen("stderr"), leave=False,
            disable=False, dynamic_ncols=True,
        )  # fmt: skip

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def outcome(self, outcome: Outcome) -> None:
        from quantscope.quiet import Screen

        reason = f": {outcome.reason}" if outcome.reason else ""
        line = f"quantscope · {outcome.config} {outcome.status.value}{reason}\n"
        if self.bar is not None:
            self.bar.write(line.rstrip("\n"), file=Screen("stderr"))
        else:
            Screen("stderr").write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
