"""Spec builders: the options of the command line and of the Python API (same names, same
checks, passed by keyword) made into the typed specs the runner, the sensitivity study, search,
recovery, sweeps and decisions take, so the two front doors cannot drift apart.

Text may be a path, a list of paths, or the text itself (a string with spaces); configs a comma
list, a list of names, config objects or saved config files. Every bad option raises
:class:`~quantscope.errors.UserError` with one sentence.

>>> run_spec(tokens=1024, context=256).data.tokens
1024
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from quantscope import config as cfg
from quantscope.config.quant import ConfigsLike
from quantscope.errors import UserError
from quantscope.specs.decisions import compare_spec, judge_spec, recommend_spec
from quantscope.specs.inputs import (
    PathLike,
    Texts,
    by_keyword,
    dtype_of,
    names_of,
    parse_depths,
    parse_levels,
    path_or_none,
    read_prompts,
    text_files,
    unknown_option,
)
from quantscope.specs.studies import recover_spec, search_spec, sensitivity_spec
from quantscope.sweeps import Executor, read_sweep
from quantscope.sweeps.sweep_file import Sweep, parse_sweep, replace_store

__all__ = [
    "by_keyword",
    "compare_spec",
    "judge_spec",
    "parse_depths",
    "parse_levels",
    "read_prompts",
    "recommend_spec",
    "recover_spec",
    "run_spec",
    "search_spec",
    "sensitivity_spec",
    "sweep_spec",
    "text_files",
    "unknown_option",
]


def run_spec(
    model: str | None = None,
    *,
    configs: ConfigsLike = cfg.DEFAULT_CONFIGS,
    text: Texts = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    split: str = "test",
    field: str = "text",
    bos: bool | None = None,
    tokens: int = 4096,
    context: int = 512,
    stride: int = 0,
    prompts: PathLike | Iterable[str] | None = None,
    tasks: str | Iterable[str] = (),
    task_limit: int = 200,
    store: PathLike | None = None,
    force: bool = False,
    device: str = "auto",
    seed: int = 0,
    dtype: cfg.DType | str = cfg.DType.FP32,
    batch_size: int = 4,
    ref_topk: int = 256,
    ref_samples: int = 64,
    exact: bool = False,
    max_new_tokens: int = 40,
    speed_reps: int = 3,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device_map: str | None = None,
    max_memory: str | None = None,
    offload_dir: PathLike | None = None,
    baseline_device_map: str | None = None,
    depths: str | Iterable[int] | None = None,
    margin: str | cfg.Margins | None = None,
    until_decided: bool = False,
    spending: str = cfg.DEFAULT_SPENDING,
    engine_port: int = 0,
    concurrency: str | Iterable[int] = (1, 4, 16),
    serve_prompt: int = 256,
    serve_output: int = 64,
    serve_requests: int = 0,
    engine_kv_gib: float = 1.0,
    engine_timeout: float = 900.0,
    engine_eager: bool = False,
    isolate: bool | None = None,
    config_timeout: float | None = None,
    config_memory: float | None = None,
    memory_check: bool = True,
) -> cfg.RunSpec:
    """The :class:`RunSpec` of ``quantscope run`` with these options (same names).
    ``until_decided``: stop each config once its verdicts at ``margin`` are resolved; the
    ``engine_*``, ``serve_*`` and ``concurrency`` options are the configs served by an engine
    (``+engine=vllm``, :class:`~quantscope.config.ServeSpec`)."""
    model_spec = cfg.model_spec(
        model,
        dtype=dtype_of(dtype, "dtype") or cfg.DType.FP32,
        revision=revision,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    placed = cfg.placements(device_map, max_memory, path_or_none(offload_dir), baseline_device_map)
    model_spec = replace(model_spec, placement=placed[0], baseline_placement=placed[1])
    data = cfg.DataSpec(
        texts=text_files(text),
        dataset=dataset,
        dataset_config=dataset_config,
        split=split,
        field=field,
        bos=bos,
        tokens=tokens,
        context=context,
        stride=stride,
    )
    return cfg.RunSpec(
        model=model_spec,
        configs=cfg.parse_config_list(configs),
        data=data,
        prompts=read_prompts(prompts),
        max_new_tokens=max_new_tokens,
        device=device,
        seed=seed,
        batch_size=batch_size,
        ref_topk=ref_topk,
        ref_samples=ref_samples,
        exact=exact,
        speed_reps=speed_reps,
        store_path=path_or_none(store),
        force=force,
        tasks=names_of(tasks),
        task_limit=task_limit,
        depths=parse_depths(depths),
        until_decided=_design(margin, until_decided),
        spending=spending,
        serve=cfg.ServeSpec(
            port=engine_port,
            concurrency=parse_levels(concurrency),
            prompt_tokens=serve_prompt,
            output_tokens=serve_output,
            requests=serve_requests,
            kv_gib=engine_kv_gib,
            timeout=engine_timeout,
            eager=engine_eager,
        ),
        isolate=isolate,
        config_timeout=config_timeout,
        config_memory_mb=config_memory,
        memory_check=memory_check,
    )


def _design(margin: str | cfg.Margins | None, until_decided: bool) -> cfg.Margins | None:
    """The margins a run that stops when decided is judged at (None: a fixed run)."""
    if not until_decided:
        return None
    return margin if isinstance(margin, cfg.Margins) else cfg.parse_margins(margin)


def sweep_spec(
    study: PathLike | dict[str, Any] | Any,
    *,
    store: PathLike | None = None,
    executor: str = "local",
    address: str | None = None,
    retries: int = 2,
    shared_dir: PathLike | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The study of ``quantscope sweep`` (a YAML file, its mapping, or a study) and how to
    run it."""

    if executor not in {e.value for e in Executor}:
        raise UserError(f"--executor must be local or ray, got '{executor}'.")
    if retries < 0:
        raise UserError(f"--retries must be 0 or more, got {retries}.")
    if isinstance(study, dict):
        study = parse_sweep(study, name=str(study.get("name", "study")))
    elif not isinstance(study, Sweep):
        study = read_sweep(study)
    how = {
        "executor": Executor(executor),
        "address": address,
        "retries": retries,
        "shared_dir": path_or_none(shared_dir),
    }
    return replace_store(study, path_or_none(store)), how
