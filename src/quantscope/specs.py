"""Spec builders: the options of the command line and of the Python API (same names, same
checks) made into the typed specs the runner, studies, search, recovery and sweeps take, so the
two front doors cannot drift apart.

Text may be a path, a list of paths, or the text itself (a string with spaces); configs a comma
list, a list of names, config objects or saved config files. Every bad option raises
:class:`~quantscope.errors.UserError` with one sentence.

>>> parse_depths("0,1k,4k")
(0, 1024, 4096)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantscope import config as cfg
from quantscope.config.base import did_you_mean
from quantscope.config.quant import ConfigsLike
from quantscope.errors import UserError

if TYPE_CHECKING:
    from quantscope.mixed import SearchSpec, StudySpec
    from quantscope.recovery import RecoverSpec

PathLike = str | Path
Texts = PathLike | Iterable[PathLike] | None


def _saved_text(text: str) -> Path:
    """Text given as a string, kept once in the cache under its digest (so it keys results
    like a file of the same text), written as every cached artifact is (``cache.made``)."""
    from quantscope.cache import cache_dir, made

    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = cache_dir() / "texts" / f"text-{digest}.txt"

    def write(tmp: Path) -> dict[str, Any]:
        tmp.write_text(text, encoding="utf-8")
        return {}

    made(path, write)
    return path


def _exists(value: str) -> bool:
    try:
        return Path(value).expanduser().exists()
    except OSError:  # a name too long for a path: text
        return False


def text_files(text: Texts, option: str = "text") -> tuple[str, ...]:
    """Paths of the text sources: a path, a list of paths, or the text itself."""
    if text is None:
        return ()
    items = [text] if isinstance(text, str | Path) else list(text)
    files = []
    for item in items:
        if isinstance(item, Path) or _exists(str(item)):
            files.append(str(item))
        elif isinstance(item, str) and (" " in item.strip() or "\n" in item):
            files.append(str(_saved_text(item)))
        else:
            raise UserError(
                f"No such {option} file '{item}'; pass a path, a list of paths, or the text "
                "itself (a string with spaces)."
            )
    return tuple(files)


def _names(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """A comma list or a list of names."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return tuple(v.strip() for v in items if v.strip())


def read_prompts(prompts: PathLike | Iterable[str] | None) -> tuple[str, ...]:
    """Generation prompts: a file with one per line (the CLI's ``--prompts``) or a list."""
    if prompts is None:
        return cfg.DEFAULT_PROMPTS
    if not isinstance(prompts, str | Path):
        found = tuple(p.strip() for p in prompts if p.strip())
        if not found:
            raise UserError("prompts is an empty list; give at least one prompt.")
        return found
    path = Path(prompts).expanduser()
    if not path.is_file():
        raise UserError(
            f"No such prompts file '{prompts}'; give a text file with one prompt per line."
        )
    found = tuple(p.strip() for p in path.read_text(encoding="utf-8").splitlines() if p.strip())
    if not found:
        raise UserError(f"Prompts file '{prompts}' has no prompts; write one prompt per line.")
    return found


def _dtype(value: cfg.DType | str | None, option: str) -> cfg.DType | None:
    if value is None or isinstance(value, cfg.DType):
        return value
    try:
        return cfg.DType(str(value))
    except ValueError:
        choices = ", ".join(d.value for d in cfg.DType)
        raise UserError(f"--{option} must be one of {choices}, got '{value}'.") from None


def _percent(value: str | float | None, option: str) -> float | None:
    """'2%', '2' or 2 → 2.0."""
    if value is None or isinstance(value, int | float):
        return value
    try:
        return float(str(value).strip().rstrip("%"))
    except ValueError:
        raise UserError(f"--{option} must be a percentage like 2%, got '{value}'.") from None


def _one_config(config: str | cfg.QuantConfig) -> cfg.QuantConfig:
    found = cfg.parse_config_list(config)
    if len(found) != 1:
        names = ", ".join(c.name for c in found)
        raise UserError(f"--config takes one config, got {len(found)}: {names}.")
    return found[0]


def _store(store: PathLike | None) -> str | None:
    return str(store) if store else None


def run_spec(
    model: str | None = None, configs: ConfigsLike = cfg.DEFAULT_CONFIGS, text: Texts = None,
    dataset: str | None = None, dataset_config: str | None = None, split: str = "test",
    field: str = "text", bos: bool | None = None, tokens: int = 4096, context: int = 512,
    stride: int = 0, prompts: PathLike | Iterable[str] | None = None,
    tasks: str | Iterable[str] = (), task_limit: int = 200, store: PathLike | None = None,
    force: bool = False, device: str = "auto", seed: int = 0,
    dtype: cfg.DType | str = cfg.DType.FP32, batch_size: int = 4, ref_topk: int = 256,
    ref_samples: int = 64, exact: bool = False, max_new_tokens: int = 40, speed_reps: int = 3,
    revision: str | None = None, trust_remote_code: bool = False, allow_pickle: bool = False,
    device_map: str | None = None, max_memory: str | None = None,
    offload_dir: PathLike | None = None, baseline_device_map: str | None = None,
    depths: str | Iterable[int] | None = None,
) -> cfg.RunSpec:  # fmt: skip
    """The :class:`RunSpec` of ``quantscope run`` with these options (same names)."""
    model_spec = cfg.model_spec(model, _dtype(dtype, "dtype") or cfg.DType.FP32, revision,
                                trust_remote_code, allow_pickle)  # fmt: skip
    placed = cfg.placements(device_map, max_memory, _store(offload_dir), baseline_device_map)
    model_spec = replace(model_spec, placement=placed[0], baseline_placement=placed[1])
    data = cfg.DataSpec(text_files(text), dataset, dataset_config, split, field, bos, tokens,
                        context, stride)  # fmt: skip
    return cfg.RunSpec(
        model=model_spec, configs=cfg.parse_config_list(configs), data=data,
        prompts=read_prompts(prompts), max_new_tokens=max_new_tokens, device=device, seed=seed,
        batch_size=batch_size, ref_topk=ref_topk, ref_samples=ref_samples, exact=exact,
        speed_reps=speed_reps, store_path=_store(store), force=force, tasks=_names(tasks),
        task_limit=task_limit, depths=parse_depths(depths),
    )  # fmt: skip


def parse_depths(depths: str | Iterable[int] | None) -> tuple[int, ...] | None:
    """``--depths`` as token counts: ``0,1k,4096`` (k = 1024); None keeps the default."""
    if depths is None:
        return None
    items = [p.strip() for p in depths.split(",")] if isinstance(depths, str) else list(depths)
    try:
        return tuple(int(p[:-1]) * 1024 if str(p).lower().endswith("k") else int(p)
                     for p in map(str, items) if p)  # fmt: skip
    except ValueError:
        raise UserError(f"--depths takes token counts like 0,1k,4k,8k, got '{depths}'.") from None


def study_spec(
    config: str | cfg.QuantConfig, model: str | None = None,
    fallback: cfg.DType | str | None = None, by: str = "block",
    modes: str | Iterable[str] = "only,all-but", calib_text: Texts = None,
    calib_tokens: int = 1024, calib_context: int = 256, calib_stride: int = 192,
    device: str = "auto", batch_size: int = 4, store: PathLike | None = None,
    trust_remote_code: bool = False, allow_pickle: bool = False,
) -> StudySpec:  # fmt: skip
    """The sensitivity study of ``quantscope sensitivity`` with these options."""
    from quantscope.mixed import StudySpec

    return StudySpec(
        model=cfg.model_spec(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle),
        config=_one_config(config), fallback=_dtype(fallback, "fallback"), by=by,
        calib=cfg.DataSpec(texts=text_files(calib_text, "calib-text"), tokens=calib_tokens,
                           context=calib_context, stride=calib_stride),
        modes=_names(modes), device=device, batch_size=batch_size, store_path=_store(store),
    )  # fmt: skip


def search_spec(
    config: str | cfg.QuantConfig, max_kl: float | None = None,
    max_ppl_increase: str | float | None = None, max_mb: float | None = None,
    model: str | None = None, fallback: cfg.DType | str | None = None, by: str = "block",
    modes: str | Iterable[str] = "all-but", text: Texts = None, tokens: int = 4096,
    context: int = 512, stride: int = 0, calib_text: Texts = None, calib_tokens: int = 1024,
    calib_context: int = 256, calib_stride: int = 192, tries: int = 3,
    save: PathLike | None = None, label: str | None = None, device: str = "auto",
    batch_size: int = 4, store: PathLike | None = None, speed_reps: int = 3,
    max_new_tokens: int = 40, prompts: PathLike | Iterable[str] | None = None,
    trust_remote_code: bool = False, allow_pickle: bool = False,
    kv: str | Iterable[str] | None = None,
) -> SearchSpec:  # fmt: skip
    """The search of ``quantscope search`` with these options (``kv``: KV caches to choose
    among, e.g. ``dynamic,quanto-int4``; sizes then count the cache at ``context`` tokens)."""
    from quantscope.mixed import Budget, SearchSpec

    study = study_spec(config, model, fallback, by, modes, calib_text, calib_tokens,
                       calib_context, calib_stride, device, batch_size, store,
                       trust_remote_code, allow_pickle)  # fmt: skip
    budget = Budget(max_kl, _percent(max_ppl_increase, "max-ppl-increase"), max_mb)
    evaluation = cfg.DataSpec(texts=text_files(text), tokens=tokens, context=context, stride=stride)
    from quantscope.config.kv import parse_kv

    caches = cfg.split_config_list(kv) if isinstance(kv, str) else list(kv or ())
    return SearchSpec(study, budget, evaluation, tries, _store(save), label,
                      speed_reps=speed_reps, max_new_tokens=max_new_tokens,
                      prompts=read_prompts(prompts),
                      kv=tuple(dict.fromkeys(parse_kv(c) for c in caches)))  # fmt: skip


def recover_spec(
    config: str | cfg.QuantConfig, model: str | None = None, rank: int = 16, alpha: int = 32,
    dropout: float = 0.0, targets: str | Iterable[str] = "all-linear", steps: int = 200,
    max_minutes: float | None = None, lr: float = 1e-3, seq_len: int = 256,
    train_batch: int = 4, kl_weight: float = 1.0, train_text: Texts = None, text: Texts = None,
    tokens: int = 4096, context: int = 512, stride: int = 0, out: PathLike | None = None,
    seed: int = 0, device: str = "auto", store: PathLike | None = None, speed_reps: int = 3,
    max_new_tokens: int = 40, prompts: PathLike | Iterable[str] | None = None,
    trust_remote_code: bool = False, allow_pickle: bool = False,
) -> RecoverSpec:  # fmt: skip
    """The recovery of ``quantscope recover`` with these options."""
    from quantscope.recovery import RecoverSpec

    return RecoverSpec(
        model=cfg.model_spec(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle),
        config=_one_config(config), rank=rank, alpha=alpha, dropout=dropout,
        targets=_names(targets), steps=steps, max_minutes=max_minutes, lr=lr, seq_len=seq_len,
        batch_size=train_batch, kl_weight=kl_weight,
        train=cfg.DataSpec(texts=text_files(train_text, "train-text"), tokens=1_000_000,
                           context=seq_len, stride=seq_len - 1),
        evaluation=cfg.DataSpec(texts=text_files(text), tokens=tokens, context=context,
                                stride=stride),
        out=_store(out), device=device, seed=seed, store_path=_store(store),
        speed_reps=speed_reps, max_new_tokens=max_new_tokens, prompts=read_prompts(prompts),
    )  # fmt: skip


def sweep_spec(
    study: PathLike | dict[str, Any] | Any, store: PathLike | None = None,
    executor: str = "local", address: str | None = None, retries: int = 2,
    shared_dir: PathLike | None = None,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The study of ``quantscope sweep`` (a YAML file, its mapping, or a study) and how to
    run it."""
    from quantscope.sweeps import Executor, read_study
    from quantscope.sweeps.study import Study, parse_study, replace_store

    if executor not in {e.value for e in Executor}:
        raise UserError(f"--executor must be local or ray, got '{executor}'.")
    if retries < 0:
        raise UserError(f"--retries must be 0 or more, got {retries}.")
    if isinstance(study, dict):
        study = parse_study(study, name=str(study.get("name", "study")))
    elif not isinstance(study, Study):
        study = read_study(study)
    how = {"executor": Executor(executor), "address": address, "retries": retries,
           "shared_dir": _store(shared_dir)}  # fmt: skip
    return replace_store(study, _store(store)), how


def unknown_option(function: str, word: str, names: Iterable[str]) -> str:
    """The sentence for a keyword the function does not take."""
    names = sorted(names)
    return (
        f"quantscope.{function} has no option '{word}'.{did_you_mean(word, names)} "
        f"Options: {', '.join(names)}."
    )
