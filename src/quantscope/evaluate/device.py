"""Where a model runs, and what its forward accepts (shared by the passes)."""

from __future__ import annotations

import inspect
from typing import Any

import torch


def model_device(model: Any) -> torch.device:
    """Where inputs must go: the first parameter's device; for a model accelerate placed
    (``hf_device_map``), the first GPU it uses, else the CPU (offloaded weights sit on the
    meta device and are brought in by accelerate's hooks)."""
    placed = getattr(model, "hf_device_map", None)
    if (placed and len(set(placed.values())) > 1) or (placed and "disk" in placed.values()):
        gpus = [v for v in placed.values() if isinstance(v, int) or str(v).startswith("cuda")]
        return torch.device(f"cuda:{gpus[0]}" if gpus and isinstance(gpus[0], int) else
                            (gpus[0] if gpus else "cpu"))  # fmt: skip
    return next(model.parameters()).device


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def accepts(model: Any, name: str) -> bool:
    """Whether the model's forward takes keyword ``name``."""
    return name in inspect.signature(model.forward).parameters
