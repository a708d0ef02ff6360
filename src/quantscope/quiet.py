"""What libraries print on their own goes to the debug log, not the screen.

While :func:`captured` is active (every command and every API call enters it), the
libraries' Python warnings, their loggers (transformers, torch, torchao, bitsandbytes, …) and
anything written to ``sys.stdout``/``sys.stderr`` (transformers' weight-loading bars,
llama.cpp's loader and quantizer lines, which llama-cpp-python prints through Python) are
written to the debug log (:func:`debug_log_path`); quantscope's own output reaches the screen
through :class:`Screen`, which writes to the streams that were there when the capture began.
Everything is restored afterwards, so a notebook's own logging and warnings are untouched.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any, TextIO

from quantscope.cache import cache_dir

DEBUG = logging.getLogger("quantscope.debug")  # only ever to the debug log
DEBUG.propagate = False
DEBUG.setLevel(logging.DEBUG)
LIBRARIES = (
    "transformers",
    "torch",
    "torchao",
    "bitsandbytes",
    "accelerate",
    "huggingface_hub",
    "peft",
    "optimum",
    "hqq",
    "gptqmodel",
    "tokenicer",
    "llama-cpp-python",
    "datasets",
    "lm_eval",
    "ray",
    "filelock",
    "urllib3",
    "httpx",
    "numexpr",
    "jax",
)
_lock = threading.RLock()
_depth = 0
_screen: dict[str, TextIO] = {}
_handler: logging.Handler | None = None


def debug_log_path() -> Path:
    """``$QUANTSCOPE_DEBUG_LOG``, else ``debug.log`` in the cache folder."""

    return Path(os.environ.get("QUANTSCOPE_DEBUG_LOG") or cache_dir() / "debug.log")


def _file_handler() -> logging.Handler:
    """The debug log's handler (made anew when the log's path changed)."""
    global _handler
    path = debug_log_path()
    if _handler is not None and Path(_handler.baseFilename) != path:  # type: ignore[attr-defined]
        DEBUG.removeHandler(_handler)
        _handler.close()
        _handler = None
    if _handler is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _handler = RotatingFileHandler(path, maxBytes=20 * 2**20, backupCount=2, delay=True)
        _handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
        )
        DEBUG.addHandler(_handler)
    return _handler


def debug(message: str, *args: Any, exc_info: bool = False) -> None:
    """Write to the debug log only (never the screen), e.g. a failed config's traceback."""
    _file_handler()
    DEBUG.debug(message, *args, exc_info=exc_info)


class _ToLog(io.TextIOBase):
    """A text stream whose lines go to the debug log (carriage returns of progress bars
    start a new line)."""

    def __init__(self, name: str, screen: TextIO) -> None:
        self.name, self._screen, self._pending = name, screen, ""

    def write(self, text: str) -> int:
        self._pending += text.replace("\r", "\n")
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip():
                DEBUG.debug("%s: %s", self.name, line.rstrip())
        return len(text)

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # C-level writers (rare) still reach the real stream
        return self._screen.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


class Screen(io.TextIOBase):
    """``sys.stdout`` or ``sys.stderr`` as they were when the capture began (or are now,
    outside one): where quantscope's own consoles and progress bars write."""

    def __init__(self, name: str) -> None:
        self.name = name

    def target(self) -> TextIO:
        return _screen.get(self.name) or getattr(sys, self.name)

    def write(self, text: str) -> int:
        return self.target().write(text)

    def flush(self) -> None:
        self.target().flush()

    def isatty(self) -> bool:
        return bool(getattr(self.target(), "isatty", lambda: False)())

    def fileno(self) -> int:
        return self.target().fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.target(), "encoding", None) or "utf-8"


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    DEBUG.debug("%s:%s: %s: %s", filename, lineno, category.__name__, message)


class _Resync(Warning):
    """Issued (and ignored) once a capture's filters are restored, for the reason below."""


def _resync_filters() -> None:
    """Point CPython's C-level copy of the warning filters back at the restored list.

    The C side keeps the ``warnings.filters`` list it saw at the last warning; when that warning
    came inside a capture, it is the capture's list (everything "default"), and at interpreter
    shutdown, when ``warnings`` is gone, the C side uses it: llama-cpp-python's two unclosed
    ``/dev/null`` files then printed a ``ResourceWarning`` on the screen after every GGUF run.
    Any warning issued now refreshes the copy; this one is ignored (the filter is added to the
    restored list itself, in place, so it holds even if the user reset theirs).
    """
    warnings.filterwarnings("ignore", category=_Resync)
    warnings.warn_explicit("", _Resync, __file__, 0)


def _library_loggers() -> list[logging.Logger]:
    """The libraries' top loggers, and every logger of theirs with handlers of its own."""
    names = set(LIBRARIES)
    for name, lg in list(logging.root.manager.loggerDict.items()):
        if isinstance(lg, logging.Logger) and lg.handlers and name.split(".")[0] in LIBRARIES:
            names.add(name)
    return [logging.getLogger(n) for n in sorted(names)]


@contextlib.contextmanager
def captured() -> Iterator[Path]:
    """Send the libraries' own output to the debug log while the block runs (re-entrant);
    yields the log's path."""
    global _depth
    with _lock:
        _depth += 1
        outermost = _depth == 1
    path = debug_log_path()
    if not outermost:
        try:
            yield path
        finally:
            with _lock:
                _depth -= 1
        return
    handler = _file_handler()
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in _library_loggers()]
    _screen.update(stdout=sys.stdout, stderr=sys.stderr)
    try:
        for lg, _, _ in saved:
            lg.handlers, lg.propagate = [handler], False
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            out, err = _ToLog("stdout", sys.stdout), _ToLog("stderr", sys.stderr)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                yield path
    finally:
        _resync_filters()
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        _screen.clear()
        with _lock:
            _depth -= 1


@contextlib.contextmanager
def native_output() -> Iterator[Path]:
    """Send what native code writes straight to file descriptors 1 and 2 while the block runs
    — C++ log lines (Ray's core worker), and everything from child processes started meanwhile
    (they inherit the descriptors) — to the debug log; yields its path. For blocks that draw
    nothing of quantscope's own: the screen's streams write to the same descriptors."""
    path = debug_log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield path
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
