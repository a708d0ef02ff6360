"""Commands that measure: ``run``, and what this machine supports (``methods``, ``doctor``)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from quantscope import config as cfg
from quantscope.cli.common import app, console, err_console, user_errors
from quantscope.errors import UserError
from quantscope.results import Outcome


class ProgressEvents:
    """Runner events drawn as a rich progress bar, with a line per finished config."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=None)

    def stage(self, label: str, total: int | None) -> None:
        self.progress.update(self.task, description=escape(label), total=total, completed=0)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def outcome(self, outcome: Outcome) -> None:
        colour = {"measured": "green", "reused": "cyan", "skipped": "yellow"}.get(
            outcome.status, "red"
        )
        reason = f": {escape(outcome.reason)}" if outcome.reason else ""
        self.progress.console.print(
            f"[{colour}]{outcome.status}[/] {escape(outcome.config)}{reason}"
        )


def _read_prompts(path: Path | None) -> tuple[str, ...]:
    if path is None:
        return cfg.DEFAULT_PROMPTS
    if not path.is_file():
        raise UserError(
            f"No such prompts file '{path}'; give a text file with one prompt per line."
        )
    prompts = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    prompts = tuple(p for p in prompts if p)
    if not prompts:
        raise UserError(f"Prompts file '{path}' has no prompts; write one prompt per line.")
    return prompts


@app.command()
@user_errors
def run(
    model: Annotated[
        str | None,
        typer.Option(
            help="Hub id, local folder or .gguf file; default: bundled SmolLM2-135M-Instruct."
        ),
    ] = None,
    configs: Annotated[
        str, typer.Option(help="Comma list of configs, e.g. fp32,bnb-nf4[double_quant=true].")
    ] = ",".join(cfg.DEFAULT_CONFIGS),
    text: Annotated[
        list[Path] | None,
        typer.Option(
            help="Text file to evaluate on (.txt, or .jsonl with --field); repeat for several. Default: Python's bundled docs."
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Hugging Face dataset: hub id, local folder or data file (.parquet/.json/.jsonl/.csv)."
        ),
    ] = None,
    dataset_config: Annotated[
        str | None, typer.Option(help="The dataset's config name, e.g. wikitext-2-raw-v1.")
    ] = None,
    split: Annotated[str, typer.Option(help="The dataset split.")] = "test",
    field: Annotated[
        str, typer.Option(help="The text field of JSONL records or dataset rows.")
    ] = "text",
    bos: Annotated[
        bool | None,
        typer.Option(
            "--bos/--no-bos",
            help="Put BOS before each text so its first token is scored (lm-evaluation-harness's rule); default: as the tokenizer does.",
        ),
    ] = None,
    tokens: Annotated[int, typer.Option(help="How many tokens of each text to score.")] = 4096,
    context: Annotated[int, typer.Option(help="Window length in tokens.")] = 512,
    stride: Annotated[
        int,
        typer.Option(
            help="Tokens a window advances; scored tokens keep ≥ context−stride of context."
        ),
    ] = 256,
    prompts: Annotated[
        Path | None, typer.Option(help="File with one generation prompt per line.")
    ] = None,
    tasks: Annotated[
        str,
        typer.Option(
            help="Comma list of tasks scored by log-likelihood: cloze, FILE.jsonl (multiple choice), an lm-eval task name or .yaml file."
        ),
    ] = "",
    task_limit: Annotated[int, typer.Option(help="Items per task at most.")] = 200,
    html_path: Annotated[
        Path | None, typer.Option("--report", help="Also write the HTML report here.")
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write everything as JSON here.")
    ] = None,
    store: Annotated[
        Path | None,
        typer.Option(help="Results database (SQLite); default $QUANTSCOPE_CACHE/results.sqlite."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-measure configs already in the store.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed for every random choice (speed inputs).")] = 0,
    dtype: Annotated[cfg.DType, typer.Option(help="Precision of the baseline.")] = cfg.DType.FP32,
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 4,
    ref_topk: Annotated[
        int, typer.Option(help="Baseline log-probs kept per token in the reference cache.")
    ] = 256,
    ref_samples: Annotated[
        int,
        typer.Option(help="Tail tokens sampled per token for the unbiased tail part of the KL."),
    ] = 64,
    exact: Annotated[
        bool,
        typer.Option(
            help="Also compute exact full-vocabulary KL, running the baseline side by side."
        ),
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated per prompt.")] = 40,
    speed_reps: Annotated[
        int, typer.Option(help="Timed repetitions for prefill and decode speed.")
    ] = 3,
    revision: Annotated[
        str | None, typer.Option(help="Hub revision (branch, tag or commit).")
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="Allow the model repo's own Python code to run.")
    ] = False,
    allow_pickle: Annotated[
        bool, typer.Option(help="Allow loading pickle (.bin) checkpoints.")
    ] = False,
) -> None:
    """Measure each config against the full-precision baseline and print one row per config."""
    from quantscope.report.terminal import (
        generations_view,
        outcome_notes,
        results_tables,
        sources_table,
        tasks_table,
    )
    from quantscope.runner import run as run_spec

    spec = cfg.RunSpec(
        model=cfg.model_spec(model, dtype, revision, trust_remote_code, allow_pickle),
        configs=cfg.parse_config_list(configs),
        data=cfg.DataSpec(
            tuple(str(t) for t in text or ()),
            dataset,
            dataset_config,
            split,
            field,
            bos,
            tokens,
            context,
            stride,
        ),
        prompts=_read_prompts(prompts),
        max_new_tokens=max_new_tokens,
        device=device,
        seed=seed,
        batch_size=batch_size,
        ref_topk=ref_topk,
        ref_samples=ref_samples,
        exact=exact,
        speed_reps=speed_reps,
        store_path=str(store) if store else None,
        force=force,
        tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()),
        task_limit=task_limit,
    )
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn()]  # fmt: skip
    with Progress(*columns, console=err_console, transient=True) as progress:
        report = run_spec(spec, ProgressEvents(progress))
    for table in results_tables(report, console.width):
        console.print(table)
    task_table = tasks_table(report)
    if task_table is not None:
        console.print(task_table)
    per_text = sources_table(report)
    if per_text is not None:
        console.print(per_text)
    for note in outcome_notes(report):
        console.print(note, style="yellow")
    console.print(generations_view(report.results))
    if html_path:
        from quantscope.report.html import render_html

        html_path.write_text(render_html(report), encoding="utf-8")
        console.print(f"HTML report written to {escape(str(html_path))}")
    if json_path:
        json_path.write_text(json.dumps(report.to_dict(), indent=2, default=str))
        console.print(f"JSON written to {escape(str(json_path))}")
    where = report.provenance.get("store", "")
    console.print(
        f"Stored in {escape(str(where))} as run {report.run_id}; "
        f"'quantscope report {report.run_id} -o report.html' draws the tradeoff plots."
    )
    if any(o.status == "failed" for o in report.outcomes):
        raise typer.Exit(1)


def _availability(device: str) -> list[tuple[str, str, str, str]]:
    from quantscope import backends

    rows = []
    for method, backend in backends.all_methods():
        reason = backend.available(method, device)
        params = ", ".join(cfg.PARAMS_OF[method]) or "–"
        rows.append((method.value, backend.name, params, reason or "yes"))
    return rows


@app.command()
@user_errors
def methods(device: Annotated[str, typer.Option(help="Device to check against.")] = "auto") -> None:
    """List every quantization config, its parameters, and whether it runs here."""
    from quantscope.models import resolve_device

    table = Table(title=f"Configs (device: {resolve_device(device)})")
    for header in ("config", "backend", "parameters", "available here"):
        table.add_column(header)
    for row in _availability(resolve_device(device)):
        table.add_row(*(escape(c) for c in row))
    console.print(table)


@app.command("gguf-converter")
@user_errors
def gguf_converter(
    into: Annotated[
        Path | None, typer.Option(help="Folder to put it in; default: quantscope's cache.")
    ] = None,
) -> None:
    """Fetch llama.cpp's convert_hf_to_gguf.py (from the source package of the installed
    llama-cpp-python, by pip), so gguf[qtype=…] can convert Hugging Face models."""
    from quantscope.backends import gguf

    reason = gguf.BACKEND.available(cfg.Method.GGUF, "cpu")
    if reason:
        raise UserError(reason)
    folder = gguf.fetch_converter(into)
    hint = f"; set {gguf.CONVERTER_ENV}={folder} to use it" if into else ""
    console.print(f"llama.cpp's converter is in {escape(str(folder))}{escape(hint)}")


@app.command()
@user_errors
def doctor() -> None:
    """What this machine supports, and why not where it does not."""
    import torch

    from quantscope.models import bundled_gguf, cache_dir, resolve_device
    from quantscope.provenance import versions

    device = resolve_device("auto")
    table = Table(title="quantscope doctor", show_header=False)
    table.add_column("what")
    table.add_column("found")
    for name, version in versions().items():
        table.add_row(name, version)
    table.add_row("device (auto)", device)
    table.add_row("torch threads", str(torch.get_num_threads()))
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        table.add_row("CUDA GPU", f"{torch.cuda.get_device_name()} (capability {cap[0]}.{cap[1]})")
        table.add_row("bf16 / fp16", f"{torch.cuda.is_bf16_supported()} / True")
    else:
        table.add_row("CUDA GPU", "none visible to torch (CPU only)")
        table.add_row("bf16 / fp16", "CPU: both run (emulated, slower than fp32 on many CPUs)")
    table.add_row("bitsandbytes backend", _bnb_backend())
    for method, backend_name, _, why in _availability(device):
        table.add_row(f"config {method}", f"{backend_name}: {why}")
    table.add_row("HF → GGUF converter", _converter())
    try:
        table.add_row("bundled model", str(bundled_gguf()))
    except UserError as err:
        table.add_row("bundled model", str(err))
    cache = cache_dir()
    free = shutil.disk_usage(cache).free / 2**30
    table.add_row("cache", f"{cache} ({free:,.1f} GiB free)")
    console.print(table)


def _converter() -> str:
    from quantscope.backends import gguf

    if gguf.BACKEND.available(cfg.Method.GGUF, "cpu"):
        return "needs llama-cpp-python (pip install 'quantscope[gguf]')"
    try:
        return str(gguf.converter())
    except UserError as err:
        return str(err)


def _bnb_backend() -> str:
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        return f"not installed ({err})"
    import torch

    where = "cuda" if torch.cuda.is_available() else "cpu"
    return f"bitsandbytes {bnb.__version__} on {where}"
