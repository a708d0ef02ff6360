"""Where a model runs, what its forward accepts, and the host heap (shared by the passes)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import logging
import os
import platform
from collections.abc import Iterator
from typing import Any

import torch

log = logging.getLogger(__name__)

# glibc maps allocations at least this big on their own and unmaps them when freed. Its
# default threshold rises (up to 32 MB) each time a mapped block is freed, after which the
# passes' transient (64 rows × vocabulary) float32 slices — 12.6 MB at a 49k vocabulary —
# come from the heap, between the small arrays kept per slice, and are not reused: measured
# on an 8k window, 5.4 GB resident against 0.54 GB with the threshold fixed here.
MMAP_THRESHOLD = 4 * 2**20
_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


def model_device(model: Any) -> torch.device:
    """Where inputs must go: the first parameter's device; for a model accelerate placed
    (``hf_device_map``), the first GPU it uses, else the CPU (offloaded weights sit on the
    meta device and are brought in by accelerate's hooks)."""
    places = list((getattr(model, "hf_device_map", None) or {}).values())  # model order
    if len(set(places)) > 1 or "disk" in places:
        gpus = [
            f"cuda:{v}" if isinstance(v, int) else str(v)
            for v in places
            if isinstance(v, int) or str(v).startswith("cuda")
        ]
        return torch.device(gpus[0] if gpus else "cpu")
    return next(model.parameters()).device


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def accepts(model: Any, name: str) -> bool:
    """Whether the model's forward takes keyword ``name``."""
    return name in inspect.signature(model.forward).parameters


@functools.cache
def steady_heap() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (once per process, when the
    first long window is scored), so the passes' large transient tensors are returned to the
    system when freed instead of fragmenting the heap; resident memory then stays flat in the
    text's length. Called once a batch's logits pass 256 MB (long windows, and a default
    run's first batch); the page faults cost long windows 12–22% of the reference pass's speed
    (README). Not on other C libraries, nor when the user set ``MALLOC_MMAP_THRESHOLD_``
    (theirs wins). Returns whether it was set."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        done = bool(ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False
    log.debug("glibc mmap threshold fixed at %d bytes: %s", MMAP_THRESHOLD, done)
    return done


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, then put back. A run's
    passes all use one count, whichever process runs them: matrix products split their
    reductions by thread, so another count changes the low digits of every logit (a Ray
    worker is given one thread per reserved CPU by default)."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)
