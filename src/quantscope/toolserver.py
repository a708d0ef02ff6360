"""A tool's server on loopback: a process of a tool's environment (``toolenv``) listening on
127.0.0.1 only, started, health-checked, watched (its memory) and stopped by quantscope, its
output in the debug log. vLLM's OpenAI-compatible server is one (``backends.vllm``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from quantscope import quiet
from quantscope.errors import ToolError, UserError
from quantscope.toolenv import Tool, python, tool_env


def free_port(port: int = 0) -> int:
    """``port`` on 127.0.0.1 if it is free (0: any free one), else one sentence."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise UserError(
                f"Port {port} on 127.0.0.1 is taken by another program; free it, or pass "
                "--engine-port 0 and quantscope picks a free one."
            ) from None
        return int(sock.getsockname()[1])


class ServerDied(ToolError):
    """A tool's server stopped or stopped answering (its config fails; the run goes on)."""


class Server:
    """A tool's server on 127.0.0.1: ``python -m MODULE ARGS`` in the tool's environment, in
    a process group of its own (so stopping it stops its workers), its output in a log file
    copied to the debug log when it stops. :meth:`start` waits for ``GET /health`` (bounded
    by ``timeout``); a thread samples the group's resident memory every ``every`` seconds
    (:attr:`peak_mb`, the sum over its processes). Use it as a context manager."""

    def __init__(
        self,
        tool: Tool,
        module: str,
        args: list[str],
        port: int = 0,
        env: dict[str, str] | None = None,
        every: float = 0.2,
    ) -> None:
        self.tool, self.module, self.args = tool, module, args
        self.port = free_port(port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.every = every
        self.peak_mb = 0.0
        self.process: subprocess.Popen[bytes] | None = None
        self.started_s = float("nan")
        # open as long as the server is, read back by output()
        self._log = tempfile.NamedTemporaryFile(prefix=f"qs-{tool.name}-", suffix=".log")  # noqa: SIM115
        self._watch: threading.Thread | None = None
        self._stop = threading.Event()
        self._said: str | None = None  # its whole output, once stopped

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float) -> float:
        """Start the server and wait until it answers; the seconds that took."""
        exe = python(self.tool)
        command = [str(exe), "-m", self.module, *self.args, "--host", "127.0.0.1"]
        command += ["--port", str(self.port)]
        quiet.debug("starting %s: %s", self.tool.name, " ".join(command))
        start = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**tool_env(), **self.extra_env},
            start_new_session=True,
        )
        self._watch = threading.Thread(target=self._sample, daemon=True)
        self._watch.start()
        while True:
            if self.process.poll() is not None:
                raise ServerDied(f"{self.tool.name} exited while starting: {self.why()}")
            if self.healthy():
                break
            if time.perf_counter() - start > timeout:
                last = self.why(0).partition("; ")[2]  # its last line, before it is stopped
                self.stop()
                raise ServerDied(f"{self.tool.name} did not answer within {timeout:.0f} s; {last}")
            time.sleep(0.5)
        self.started_s = time.perf_counter() - start
        return self.started_s

    def healthy(self) -> bool:
        """Whether ``GET /health`` answers 200 now."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def why(self, settle: float = 2.0) -> str:
        """Why the server is gone, in one line: its exit code or signal, its last log line.
        A client can see the connection drop before the killed server has exited: it gets
        ``settle`` seconds to, so its signal is said rather than "it stopped answering"."""
        code = None
        if self.process is not None:
            try:
                code = self.process.wait(settle)
            except subprocess.TimeoutExpired:
                code = None
        if code is None:
            how = "it stopped answering"
        elif code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exit {code}"
        lines = [x for x in self.output().splitlines() if x.strip()]
        last = lines[-1].strip()[:200] if lines else "no output"
        return f"{how}; its last line: {last}"

    def output(self) -> str:
        """What the server printed so far."""
        if self._said is not None:
            return self._said
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set() and self.process is not None:
            try:
                top = psutil.Process(self.process.pid)
                rss = sum(p.memory_info().rss for p in [top, *top.children(recursive=True)])
            except psutil.Error:
                return
            self.peak_mb = max(self.peak_mb, rss / 2**20)
            self._stop.wait(self.every)

    def stop(self, grace: float = 15.0) -> None:
        """Stop the server and everything it started (SIGTERM, then SIGKILL after ``grace``
        seconds); its output goes to the debug log."""
        self._stop.set()
        process = self.process
        if process is None or self._said is not None:
            return
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
        _signal_group(process.pid, signal.SIGKILL)  # workers that outlived their parent
        process.wait()
        said = self.output()
        quiet.debug("%s server said:\n%s", self.tool.name, said[-30000:])
        self._said = said
        self._log.close()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
