"""LoRA recovery: train adapters on a quantized model toward the baseline, then measure how
much of the accuracy gap they close.

Training reads only training text (the bundled text's training part, or ``--train-text``),
never the evaluation text. The default objective is distillation: the KL divergence from the
baseline's next-token distribution (the teacher, run alongside) to the quantized student's,
optionally mixed with the next-token loss. The adapter is saved in peft's format; the
recovered config is ``CONFIG+lora=FOLDER`` and is evaluated by the runner like any other.

bitsandbytes on CPU repacks a 4-bit layer for its inference kernel the first time it runs in
eval mode without gradients; backpropagating through a repacked layer gives some LoRA layers
no gradient. So the student is always loaded fresh here and kept in train mode from the first
forward pass to the last (the model has no dropout, so train mode changes nothing else), and
only the adapter is ever saved.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantscope import backends, data, models
from quantscope.config import (
    DEFAULT_PROMPTS,
    DataSpec,
    ModelSpec,
    QuantConfig,
    RunSpec,
    precision_config,
)
from quantscope.errors import UserError
from quantscope.events import Events, LogEvents
from quantscope.metrics.divergence import kl_full
from quantscope.provenance import digest, versions
from quantscope.results import Display
from quantscope.runner import default_store
from quantscope.store import Store, now

log = logging.getLogger(__name__)


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
        r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
        task_type="CAUSAL_LM",
    )  # fmt: skip
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

    from quantscope.backends import lora

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
    losses, kls, ces = [], [], []
    start, interrupted, step = time.perf_counter(), False, 0
    events.stage(f"Training LoRA r={spec.rank} on {spec.config.name}", spec.steps)
    try:
        for step in range(1, spec.steps + 1):
            batch = next_batch().to(device)
            with torch.no_grad():
                target = teacher(input_ids=batch, use_cache=False).logits
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
        interrupted, step = True, len(losses)
    seconds = time.perf_counter() - start
    size = save_adapter(student, out, spec, files, {"steps": len(losses), "seconds": seconds,
                        "losses": losses, "interrupted": interrupted})  # fmt: skip
    return Training(
        len(losses), seconds, losses, kls, ces, str(out), sum(p.numel() for p in params), size,
        interrupted, len(ids), " + ".join(s.name for s in sources),
    )  # fmt: skip


def training_ids(spec: RecoverSpec, tokenizer: Any) -> tuple[list[int], list[data.TextSource]]:
    """The token stream training reads (training text only, at most ``spec.train.tokens``)."""
    sources = data.training_sources(spec.train)
    window = replace(spec.train, context=spec.seq_len, stride=spec.seq_len - 1)
    encode = data.encoder(tokenizer)
    return [t for s in sources for t in data.tokenize(s, encode, window)], sources


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
    from quantscope.backends.lora import ADAPTER_WEIGHTS

    try:
        out.mkdir(parents=True, exist_ok=True)
        student.save_pretrained(str(out), safe_serialization=True)
        meta = {
            "config": spec.config.name, "model": files.name, "model_fingerprint": files.fingerprint,
            "settings": {k: v for k, v in asdict(spec).items() if k not in ("model", "config")},
            "versions": versions(), "created": now(), **info,
        }  # fmt: skip
        (out / "quantscope-recover.json").write_text(json.dumps(meta, indent=2, default=str))
    except OSError as err:
        raise UserError(f"Cannot write the adapter to '{out}': {err}.") from None
    return (out / ADAPTER_WEIGHTS).stat().st_size


def recovery(before: float, before_se: float, after: float, after_se: float) -> tuple[float, float]:
    """Share of a gap closed, 1 − after/before, with its delta-method standard error.

    The two estimates are treated as independent; they are measured on the same tokens and
    positively correlated, so this se is conservative (too large, never too small).

    >>> r, se = recovery(0.2, 0.01, 0.1, 0.01)
    >>> round(r, 3), round(se, 4)
    (0.5, 0.0559)
    """
    if before <= 0:
        return math.nan, math.nan
    ratio = after / before
    se = math.sqrt((after_se / before) ** 2 + (ratio * before_se / before) ** 2)
    return 1.0 - ratio, se


@dataclass
class Recovery(Display):
    """The trained adapter, the three evaluated configs, and the recovery of each gap."""

    training: Training
    configs: dict[str, dict[str, float]]
    kl_recovery: tuple[float, float]
    ppl_recovery: tuple[float, float]
    run_id: str
    recovered_config: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_dataframe(self) -> Any:
        """One row per config: baseline, plain quantized, recovered."""
        import pandas as pd

        return pd.DataFrame(self.configs).T.rename_axis("config").reset_index()


def recover(
    spec: RecoverSpec,
    events: Events | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
) -> Recovery:
    """Train (:func:`train`), then evaluate baseline, plain and recovered configs on the
    evaluation text with the runner, and report the share of the KL and perplexity gaps closed."""
    from quantscope import runner

    events = events or LogEvents()
    trained = train(spec, events, on_step)
    if trained.interrupted:
        raise KeyboardInterrupt
    folder = str(Path(trained.adapter).resolve())
    recovered = replace(
        spec.config, lora=folder, label=f"{spec.config.display}+lora={Path(folder).name}"
    )
    base = precision_config(spec.model.dtype)
    run_spec = RunSpec(model=spec.model, configs=(base, spec.config, recovered),
                       data=spec.evaluation, device=spec.device, seed=spec.seed,
                       store_path=spec.store_path, speed_reps=spec.speed_reps,
                       max_new_tokens=spec.max_new_tokens, prompts=spec.prompts)  # fmt: skip
    report = runner.run(run_spec, events)
    metrics = {o.config: o.result.metrics for o in report.outcomes if o.result is not None}
    if spec.config.display not in metrics or recovered.display not in metrics:
        reasons = "; ".join(f"{o.config}: {o.reason}" for o in report.outcomes if o.reason)
        raise UserError(f"The evaluation of the recovered config failed: {reasons}")
    invalid = [f"{o.config}: {o.result.invalid}" for o in report.outcomes
               if o.result is not None and o.result.invalid]  # fmt: skip
    if invalid:
        raise UserError("; ".join(invalid) + "; measure in another dtype (--dtype).")
    plain, new = metrics[spec.config.display], metrics[recovered.display]
    result = Recovery(
        trained, metrics,
        recovery(plain["kl_mean"], plain["kl_se"], new["kl_mean"], new["kl_se"]),
        recovery(plain["dppl_log"], plain["dppl_log_se"], new["dppl_log"], new["dppl_log_se"]),
        report.run_id, recovered.name,
    )  # fmt: skip
    with Store(spec.store_path or default_store()) as store:
        store.put_study(digest("recover", trained.adapter, now()), "recover", result.to_dict())
    return result
