"""The builders of the studies of one model: a sensitivity study, a budgeted search, a LoRA
recovery (``quantscope sensitivity``, ``search``, ``recover``), keyword-only like ``run_spec``."""

from __future__ import annotations

from collections.abc import Iterable

from quantscope import config as cfg
from quantscope.config.kv import parse_kv
from quantscope.mixed import SearchSpec, SensitivitySpec
from quantscope.recovery import RecoverSpec
from quantscope.specs.inputs import (
    PathLike,
    Texts,
    dtype_of,
    names_of,
    one_config,
    path_or_none,
    read_prompts,
    text_files,
)


def sensitivity_spec(
    config: str | cfg.QuantConfig,
    *,
    model: str | None = None,
    fallback: cfg.DType | str | None = None,
    by: str = "block",
    modes: str | Iterable[str] = "only,all-but",
    calib_text: Texts = None,
    calib_tokens: int = 1024,
    calib_context: int = 256,
    calib_stride: int = 192,
    device: str = "auto",
    batch_size: int = 4,
    store: PathLike | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> SensitivitySpec:
    """The sensitivity study of ``quantscope sensitivity`` with these options."""

    return SensitivitySpec(
        model=cfg.model_spec(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle),
        config=one_config(config),
        fallback=dtype_of(fallback, "fallback"),
        by=by,
        calib=cfg.DataSpec(
            texts=text_files(calib_text, "calib-text"),
            tokens=calib_tokens,
            context=calib_context,
            stride=calib_stride,
        ),
        modes=names_of(modes),
        device=device,
        batch_size=batch_size,
        store_path=path_or_none(store),
    )


def search_spec(
    config: str | cfg.QuantConfig,
    *,
    max_kl: float | None = None,
    max_ppl_increase: str | float | None = None,
    max_mb: float | None = None,
    model: str | None = None,
    fallback: cfg.DType | str | None = None,
    by: str = "block",
    modes: str | Iterable[str] = "all-but",
    text: Texts = None,
    tokens: int = 4096,
    context: int = 512,
    stride: int = 0,
    calib_text: Texts = None,
    calib_tokens: int = 1024,
    calib_context: int = 256,
    calib_stride: int = 192,
    tries: int = 3,
    save: PathLike | None = None,
    label: str | None = None,
    device: str = "auto",
    batch_size: int = 4,
    store: PathLike | None = None,
    speed_reps: int = 3,
    max_new_tokens: int = 40,
    prompts: PathLike | Iterable[str] | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    kv: str | Iterable[str] | None = None,
    until_decided: bool = False,
) -> SearchSpec:
    """The search of ``quantscope search`` with these options (``kv``: KV caches to choose
    among, e.g. ``dynamic,quanto-int4``; sizes then count the cache at ``context`` tokens;
    ``until_decided``: each verification stops once the budget is decided)."""

    study = sensitivity_spec(
        config,
        model=model,
        fallback=fallback,
        by=by,
        modes=modes,
        calib_text=calib_text,
        calib_tokens=calib_tokens,
        calib_context=calib_context,
        calib_stride=calib_stride,
        device=device,
        batch_size=batch_size,
        store=store,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    budget = cfg.Budget(
        max_kl=max_kl,
        max_ppl_increase=cfg.parse_percent(max_ppl_increase, "--max-ppl-increase"),
        max_mb=max_mb,
    )
    evaluation = cfg.DataSpec(texts=text_files(text), tokens=tokens, context=context, stride=stride)
    caches = cfg.split_config_list(kv) if isinstance(kv, str) else list(kv or ())
    return SearchSpec(
        study=study,
        budget=budget,
        evaluation=evaluation,
        tries=tries,
        save=path_or_none(save),
        label=label,
        speed_reps=speed_reps,
        max_new_tokens=max_new_tokens,
        prompts=read_prompts(prompts),
        kv=tuple(dict.fromkeys(parse_kv(c) for c in caches)),
        until_decided=until_decided,
    )


def recover_spec(
    config: str | cfg.QuantConfig,
    *,
    model: str | None = None,
    rank: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    targets: str | Iterable[str] = "all-linear",
    steps: int = 200,
    max_minutes: float | None = None,
    lr: float = 1e-3,
    seq_len: int = 256,
    train_batch: int = 4,
    kl_weight: float = 1.0,
    train_text: Texts = None,
    text: Texts = None,
    tokens: int = 4096,
    context: int = 512,
    stride: int = 0,
    out: PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    store: PathLike | None = None,
    speed_reps: int = 3,
    max_new_tokens: int = 40,
    prompts: PathLike | Iterable[str] | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> RecoverSpec:
    """The recovery of ``quantscope recover`` with these options."""

    return RecoverSpec(
        model=cfg.model_spec(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle),
        config=one_config(config),
        rank=rank,
        alpha=alpha,
        dropout=dropout,
        targets=names_of(targets),
        steps=steps,
        max_minutes=max_minutes,
        lr=lr,
        seq_len=seq_len,
        batch_size=train_batch,
        kl_weight=kl_weight,
        train=cfg.DataSpec(
            texts=text_files(train_text, "train-text"),
            tokens=1_000_000,
            context=seq_len,
            stride=seq_len - 1,
        ),
        evaluation=cfg.DataSpec(
            texts=text_files(text), tokens=tokens, context=context, stride=stride
        ),
        out=path_or_none(out),
        device=device,
        seed=seed,
        store_path=path_or_none(store),
        speed_reps=speed_reps,
        max_new_tokens=max_new_tokens,
        prompts=read_prompts(prompts),
    )
