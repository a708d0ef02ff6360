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

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from quantscope import runner
from quantscope.config import RunSpec, precision_config
from quantscope.errors import UserError
from quantscope.events import Events, LogEvents
from quantscope.provenance import digest, now
from quantscope.recovery.spec import RecoverSpec, adapter_folder, save_adapter
from quantscope.recovery.training import Training, train
from quantscope.results import Display
from quantscope.store import Store, default_store

__all__ = [
    "RecoverSpec",
    "Recovery",
    "Training",
    "adapter_folder",
    "recover",
    "recovery",
    "save_adapter",
    "train",
]


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

    events = events or LogEvents()
    trained = train(spec, events, on_step)
    if trained.interrupted:
        raise KeyboardInterrupt
    folder = str(Path(trained.adapter).resolve())
    recovered = replace(
        spec.config, lora=folder, label=f"{spec.config.display}+lora={Path(folder).name}"
    )
    base = precision_config(spec.model.dtype)
    run_spec = RunSpec(
        model=spec.model,
        configs=(base, spec.config, recovered),
        data=spec.evaluation,
        device=spec.device,
        seed=spec.seed,
        store_path=spec.store_path,
        speed_reps=spec.speed_reps,
        max_new_tokens=spec.max_new_tokens,
        prompts=spec.prompts,
    )
    report = runner.run(run_spec, events)
    metrics = {o.config: o.result.metrics for o in report.outcomes if o.result is not None}
    if spec.config.display not in metrics or recovered.display not in metrics:
        reasons = "; ".join(f"{o.config}: {o.reason}" for o in report.outcomes if o.reason)
        raise UserError(f"The evaluation of the recovered config failed: {reasons}")
    invalid = [
        f"{o.config}: {o.result.invalid}"
        for o in report.outcomes
        if o.result is not None and o.result.invalid
    ]
    if invalid:
        raise UserError("; ".join(invalid) + "; measure in another dtype (--dtype).")
    plain, new = metrics[spec.config.display], metrics[recovered.display]
    result = Recovery(
        trained,
        metrics,
        recovery(plain["kl_mean"], plain["kl_se"], new["kl_mean"], new["kl_se"]),
        recovery(plain["dppl_log"], plain["dppl_log_se"], new["dppl_log"], new["dppl_log_se"]),
        report.run_id,
        recovered.name,
    )
    with Store(spec.store_path or default_store()) as store:
        store.put_analysis(digest("recover", trained.adapter, now()), "recover", result.to_dict())
    return result
