"""Where a model runs, and what its forward accepts (shared by the passes)."""

from __future__ import annotations

import inspect
from typing import Any

import torch


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (where inputs must go)."""
    return next(model.parameters()).device


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def accepts(model: Any, name: str) -> bool:
    """Whether the model's forward takes keyword ``name``."""
    return name in inspect.signature(model.forward).parameters
