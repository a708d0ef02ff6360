"""Where a model runs, and what its forward accepts (shared by the passes)."""

from __future__ import annotations

import inspect
from typing import Any

import torch


def model_device(model: Any) -> torch.device:
    """Where inputs must go: the first parameter's device; for a model accelerate placed
    (``hf_device_map``), the first GPU it uses, else the CPU (offloaded weights sit on the
    meta device and are brought in by accelerate's hooks)."""
    places = list((getattr(model, "hf_device_map", None) or {}).values())  # model order
    if len(set(places)) > 1 or "disk" in places:
        gpus = [f"cuda:{v}" if isinstance(v, int) else str(v) for v in places
                if isinstance(v, int) or str(v).startswith("cuda")]  # fmt: skip
        return torch.device(gpus[0] if gpus else "cpu")
    return next(model.parameters()).device


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def accepts(model: Any, name: str) -> bool:
    """Whether the model's forward takes keyword ``name``."""
    return name in inspect.signature(model.forward).parameters
