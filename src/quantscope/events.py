"""What long-running work tells its caller while it works: stages, progress, outcomes.

The runner, sensitivity, search and recovery report through an :class:`Events`; the command
line draws rich progress bars from them, the Python API tqdm bars (:class:`BarEvents`) or
only logs them (:class:`LogEvents`).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from quantscope.quiet import Screen
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
    """quantscope's own progress: one bar that each stage takes over (``quantscope · STAGE``,
    counting the stage's work when its size is known), a widget in Jupyter when ipywidgets is
    installed and text on stderr elsewhere (``tqdm.auto``), and a lasting line per finished
    config. The default of the Python API (``progress=False`` turns it off)."""

    COUNTED = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"
    UNCOUNTED = "{desc} [{elapsed}]"

    def __init__(self) -> None:

        self.bar: Any = None
        self.screen = Screen("stderr")  # one object: tqdm.write clears the bars on its file

    def stage(self, label: str, total: int | None) -> None:
        from tqdm.auto import tqdm

        desc, form = f"quantscope · {label}", self.UNCOUNTED if total is None else self.COUNTED
        if self.bar is None:
            self.bar = tqdm(
                total=total,
                desc=desc,
                bar_format=form,
                file=self.screen,
                leave=False,
                disable=False,
                dynamic_ncols=True,
            )
            return
        self.bar.set_description_str(desc, refresh=False)
        self.bar.bar_format = form
        self.bar.reset(total=total)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def outcome(self, outcome: Outcome) -> None:
        from tqdm.auto import tqdm

        reason = f": {outcome.reason}" if outcome.reason else ""
        line = f"quantscope · {outcome.config} {outcome.status.value}{reason}"
        tqdm.write(line, file=self.screen)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
