"""What a recovery is asked to do (:class:`RecoverSpec`) and where its adapter goes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quantscope import models
from quantscope.backends.lora import ADAPTER_WEIGHTS
from quantscope.config import (
    DEFAULT_PROMPTS,
    DataSpec,
    ModelSpec,
    QuantConfig,
)
from quantscope.errors import UserError
from quantscope.provenance import now, versions


@dataclass(frozen=True)
class RecoverSpec:
    """How to train the adapter (``train`` is the training text; its ``tokens`` caps how much
    is read) and where to evaluate it (``evaluation``)."""

    model: ModelSpec
    config: QuantConfig
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: tuple[str, ...] = ("all-linear",)
    steps: int = 200
    max_minutes: float | None = None
    lr: float = 1e-3
    seq_len: int = 256
    batch_size: int = 4
    kl_weight: float = 1.0
    train: DataSpec = field(
        default_factory=lambda: DataSpec(tokens=1_000_000, context=256, stride=255)
    )
    evaluation: DataSpec = field(default_factory=DataSpec)
    out: str | None = None
    device: str = "auto"
    seed: int = 0
    store_path: str | None = None
    speed_reps: int = 3  # of the evaluation run (a run like any other, stored)
    max_new_tokens: int = 40
    prompts: tuple[str, ...] = DEFAULT_PROMPTS

    def __post_init__(self) -> None:
        if self.rank < 1 or self.steps < 1 or self.batch_size < 1:
            raise UserError("--rank, --steps and --batch-size must be at least 1.")
        if not 0.0 <= self.kl_weight <= 1.0:
            raise UserError(f"--kl-weight must be between 0 and 1, got {self.kl_weight}.")
        if not 0.0 < self.lr < 1.0:
            raise UserError(f"--lr must be between 0 and 1, got {self.lr}.")
        if self.seq_len < 8:
            raise UserError(f"--seq-len must be at least 8 tokens, got {self.seq_len}.")
        if self.config.lora:
            raise UserError(f"'{self.config.name}' already has an adapter; name the plain config.")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError(f"--max-minutes must be positive, got {self.max_minutes}.")


def adapter_folder(spec: RecoverSpec) -> str:
    """Where the adapter goes: ``spec.out``, else adapters/CONFIG-lora-rRANK."""
    if spec.out:
        return spec.out
    name = spec.config.name.replace("[", "_").replace("]", "").replace(";", "_").replace(",", "_")
    return f"adapters/{name}-lora-r{spec.rank}"


def save_adapter(
    student: Any, out: Path, spec: RecoverSpec, files: models.ModelFiles, info: dict[str, Any]
) -> int:
    """Save only the adapter (peft's format, safetensors) and how it was trained; its bytes."""

    try:
        out.mkdir(parents=True, exist_ok=True)
        student.save_pretrained(str(out), safe_serialization=True)
        meta = {
            "config": spec.config.name,
            "model": files.name,
            "model_fingerprint": files.fingerprint,
            "settings": {k: v for k, v in asdict(spec).items() if k not in ("model", "config")},
            "versions": versions(),
            "created": now(),
            **info,
        }
        (out / "quantscope-recover.json").write_text(json.dumps(meta, indent=2, default=str))
    except OSError as err:
        raise UserError(f"Cannot write the adapter to '{out}': {err}.") from None
    return (out / ADAPTER_WEIGHTS).stat().st_size
