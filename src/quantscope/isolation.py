"""A function of ours run in a child process of its own, so that whatever kills it — a
segfault in a native library, an abort, the kernel's out-of-memory killer, a hang — costs
that call, not the caller: :func:`call` gives back the function's value, or how the child
ended (signal or exit code, its last lines, its peak memory) in one sentence.

The child is a fresh Python (``python -m quantscope.workers.child``: nothing inherited but the
environment), in a process group of its own, its output appended to the debug log. Arguments
and the value travel as pickles in files this process writes and reads, between processes of
the same installation (never a model's file).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from quantscope.quiet import debug_log_path

POLL_S = 0.1
MB = 1 << 20
OOM_HINT = "the kernel's out-of-memory killer sends it when memory runs out"


@dataclass(frozen=True)
class Ended:
    """How a child call ended: ``value`` when it returned, else ``reason`` (one sentence)."""

    value: Any
    reason: str
    peak_mb: float
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.reason


def _peak(process: psutil.Process) -> float:
    """Resident memory of the child and its own children, in MB (0 once it is gone)."""
    try:
        rss = process.memory_info().rss
        for kid in process.children(recursive=True):
            try:
                rss += kid.memory_info().rss
            except psutil.Error:
                continue
        return rss / MB
    except psutil.Error:
        return 0.0


def _cap(pid: int, memory_mb: float | None) -> None:
    """Cap process ``pid``'s address space at ``memory_mb`` (set from here as it starts: a
    pre-exec hook is unsafe in a process with threads, as torch's is)."""
    if memory_mb:
        cap = int(memory_mb * MB)
        resource.prlimit(pid, resource.RLIMIT_AS, (cap, cap))


def _last_lines(log: Path, start: int, count: int = 3) -> str:
    """What the child last said in the log (written after ``start``): for a crash Python's
    fault handler caught, its first line and the innermost frames; else the last ``count``
    non-empty lines."""
    try:
        with open(log, "rb") as f:
            f.seek(start)
            lines = [x.strip() for x in f.read().decode("utf-8", "replace").splitlines()]
    except OSError:
        return ""
    lines = [x for x in lines if x]
    fatal = [i for i, x in enumerate(lines) if x.startswith("Fatal Python error")]
    if fatal:  # its stacks: other threads', then the crashing one's ("Current thread")
        after = lines[fatal[-1] :]
        own = next((i for i, x in enumerate(after) if x.startswith("Current thread")), 0)
        frames = [x for x in after[own:] if x.startswith('File "')][: count - 1]
        kept = [after[0], *frames]
    else:
        kept = lines[-count:]
    return " | ".join(x[:200] for x in kept)


def how_it_ended(code: int, peak_mb: float, timeout: float | None, timed_out: bool) -> str:
    """The sentence for a child that did not return (``code``: its exit status, negative for
    a signal).

    >>> how_it_ended(-11, 812.0, None, False)
    'its process was killed by SIGSEGV (signal 11) at a peak of 812 MB'
    >>> how_it_ended(3, 90.0, None, False)
    'its process exited with code 3 at a peak of 90 MB'
    """
    peak = f"at a peak of {peak_mb:,.0f} MB"
    if timed_out:
        return f"it ran past --config-timeout ({timeout:g} s) and was stopped, {peak}"
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else "a signal"
        hint = f" ({OOM_HINT})" if -code == signal.SIGKILL else ""
        return f"its process was killed by {name} (signal {-code}){hint} {peak}"
    return f"its process exited with code {code} {peak}"


def call(
    target: str,
    args: tuple[Any, ...],
    *,
    timeout: float | None = None,
    memory_mb: float | None = None,
) -> Ended:
    """``target`` ("module:function", ours) called with ``args`` in a child process; what it
    returned, or why it did not (the child stopped at ``timeout`` seconds; its address space
    capped at ``memory_mb``)."""
    log = debug_log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    start_at = log.stat().st_size if log.exists() else 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quantscope-child-") as folder:
        given, back = Path(folder) / "args.pkl", Path(folder) / "value.pkl"
        given.write_bytes(pickle.dumps((target, args)))
        command = [sys.executable, "-m", "quantscope.workers.child", str(given), str(back)]
        with open(log, "ab") as out:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # its own group: stopped whole, with its children
                env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # a crash prints its stack
            )
        _cap(child.pid, memory_mb)
        process, peak, timed_out = psutil.Process(child.pid), 0.0, False
        deadline = time.monotonic() + timeout if timeout else None
        try:
            while child.poll() is None:
                peak = max(peak, _peak(process))
                if deadline is not None and time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(POLL_S)
        finally:  # a timeout, or the caller interrupted: the child's whole group goes
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        seconds = time.perf_counter() - started
        if child.returncode == 0 and back.exists() and not timed_out:
            return Ended(pickle.loads(back.read_bytes()), "", peak, seconds)
    reason = how_it_ended(child.returncode, peak, timeout, timed_out)
    last = _last_lines(log, start_at)
    return Ended(None, reason + (f"; its last lines: {last}" if last else ""), peak, seconds)
