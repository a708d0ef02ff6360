"""Training LoRA adapters on a quantized student toward the baseline teacher (distillation,
optionally mixed with the next-token loss), on training text only."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantscope import backends, data, models
from quantscope.backends import lora
from quantscope.config import (
    precision_config,
)
from quantscope.errors import UserError
from quantscope.events import Events, LogEvents
from quantscope.metrics.divergence import kl_full
from quantscope.recovery.spec import RecoverSpec, adapter_folder, save_adapter


def training_batches(
    ids: list[int], seq_len: int, batch_size: int, seed: int
) -> Callable[[], torch.Tensor]:
    """A function giving the next (B, seq_len) batch of training sequences: the token stream
    cut into non-overlapping sequences, reshuffled every epoch with ``seed``."""
    n = len(ids) // seq_len
    if n < 1:
        raise UserError(
            f"The training text gives {len(ids)} tokens, fewer than one --seq-len {seq_len}."
        )
    chunks = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    rng = np.random.default_rng(seed)
    order: list[int] = []

    def next_batch() -> torch.Tensor:
        nonlocal order
        picked: list[int] = []
        while len(picked) < min(batch_size, n):
            if not order:
                order = rng.permutation(n).tolist()
            picked.append(order.pop())
        return chunks[picked]

    return next_batch


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, ids: torch.Tensor, kl_weight: float
) -> tuple[torch.Tensor, float, float]:
    """``kl_weight``·KL(teacher ‖ student) + (1 − ``kl_weight``)·next-token loss, averaged over
    positions; logits (B, T, V), ids (B, T). Returns the loss and its two parts."""
    s = student[:, :-1].float().log_softmax(-1)  # (B, T-1, V)
    t = teacher[:, :-1].float().log_softmax(-1)
    kl = kl_full(t, s).mean()
    ce = -s.gather(-1, ids[:, 1:, None]).mean()
    loss = kl_weight * kl + (1.0 - kl_weight) * ce if kl_weight < 1.0 else kl
    return loss, float(kl.detach()), float(ce.detach())


@dataclass
class Training:
    """What training did: steps, losses every step, seconds, and the saved adapter."""

    steps: int
    seconds: float
    losses: list[float]
    kl: list[float]
    ce: list[float]
    adapter: str
    trainable_params: int
    adapter_bytes: int
    interrupted: bool
    train_tokens: int
    train_text: str


def student_model(spec: RecoverSpec, files: models.ModelFiles, device: str) -> Any:
    """A freshly loaded quantized model with new LoRA adapters, in train mode."""
    from peft import LoraConfig, get_peft_model

    model = backends.get(spec.config).load(files, spec.model, spec.config, device).model
    for p in model.parameters():
        p.requires_grad_(False)
    targets: str | list[str] = (
        "all-linear" if spec.targets == ("all-linear",) else list(spec.targets)
    )
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        student = get_peft_model(model, config)
    except ValueError as err:
        raise UserError(f"Cannot put LoRA adapters on these modules: {err}") from None
    student.train()
    return student


def train(
    spec: RecoverSpec,
    events: Events | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
) -> Training:
    """Train LoRA adapters on ``spec.config`` toward the baseline; save them; Ctrl-C stops
    training and saves the adapter so far (``interrupted``)."""
    from transformers import get_linear_schedule_with_warmup

    events = events or LogEvents()
    lora.check(spec.config)
    device = models.resolve_device(spec.device)
    files = models.resolve(spec.model)
    tokenizer = models.load_tokenizer(files, spec.model)
    ids, sources = training_ids(spec, tokenizer)
    next_batch = training_batches(ids, spec.seq_len, spec.batch_size, spec.seed)
    torch.manual_seed(spec.seed)
    events.stage("Loading the teacher (baseline) and the student", None)
    base = precision_config(spec.model.dtype)
    teacher = backends.get(base).load(files, spec.model, base, device).model
    student = student_model(spec, files, device)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, max(1, spec.steps // 20), spec.steps)
    out = Path(adapter_folder(spec)).expanduser()
    events.stage(f"Training LoRA r={spec.rank} on {spec.config.name}", spec.steps)
    start = time.perf_counter()
    losses, kls, ces, interrupted = _steps(
        spec, teacher, student, optimizer, schedule, next_batch, device, events, on_step
    )
    seconds = time.perf_counter() - start
    size = save_adapter(
        student,
        out,
        spec,
        files,
        {"steps": len(losses), "seconds": seconds, "losses": losses, "interrupted": interrupted},
    )
    return Training(
        len(losses),
        seconds,
        losses,
        kls,
        ces,
        str(out),
        sum(p.numel() for p in params),
        size,
        interrupted,
        len(ids),
        " + ".join(s.name for s in sources),
    )


def training_ids(spec: RecoverSpec, tokenizer: Any) -> tuple[list[int], list[data.TextSource]]:
    """The token stream training reads (training text only, at most ``spec.train.tokens``)."""
    sources = data.training_sources(spec.train)
    window = replace(spec.train, context=spec.seq_len, stride=spec.seq_len - 1)
    encode = data.encoder(tokenizer)
    return [t for s in sources for t in data.tokenize(s, encode, window)], sources


def _steps(
    spec: RecoverSpec,
    teacher: Any,
    student: Any,
    optimizer: Any,
    schedule: Any,
    next_batch: Callable[[], torch.Tensor],
    device: str,
    events: Events,
    on_step: Callable[[int, float, float], None] | None,
) -> tuple[list[float], list[float], list[float], bool]:
    """The training steps: losses, KLs and next-token losses per step, and whether Ctrl-C
    stopped them (what was trained so far is kept)."""
    losses: list[float] = []
    kls: list[float] = []
    ces: list[float] = []
    start = time.perf_counter()
    try:
        for step in range(1, spec.steps + 1):
            batch = next_batch().to(device)  # (B, T)
            with torch.no_grad():
                target = teacher(input_ids=batch, use_cache=False).logits  # (B, T, V)
            logits = student(input_ids=batch, use_cache=False).logits
            loss, kl, ce = distill_loss(logits, target, batch, spec.kl_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            kls.append(kl)
            ces.append(ce)
            events.advance(1)
            if on_step:
                on_step(step, float(loss), kl)
            elapsed = (time.perf_counter() - start) / 60
            if spec.max_minutes is not None and elapsed >= spec.max_minutes:
                break
    except KeyboardInterrupt:
        return losses, kls, ces, True
    return losses, kls, ces, False
