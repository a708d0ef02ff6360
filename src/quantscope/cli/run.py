"""``quantscope run``: measure each config against the full-precision baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from quantscope import config as cfg
from quantscope.cli.browse import run_html
from quantscope.cli.common import (
    BatchOpt,
    ContextOpt,
    DeviceOpt,
    HtmlOpt,
    JsonOpt,
    MarginOpt,
    ModelOpt,
    NewTokensOpt,
    PickleOpt,
    ProgressEvents,
    PromptsOpt,
    SeedOpt,
    SpeedRepsOpt,
    StoreOpt,
    StrideOpt,
    TextOpt,
    TokensOpt,
    TrustOpt,
    app,
    console,
    progress,
    user_errors,
    write_outputs,
)
from quantscope.cli.decide import print_verdicts
from quantscope.decide import stored
from quantscope.errors import UserError
from quantscope.quiet import debug_log_path
from quantscope.report import terminal
from quantscope.results import RunReport, Status
from quantscope.runner import run as run_one
from quantscope.specs import by_keyword, judge_spec, run_spec


@app.command()
@user_errors
def run(
    model: ModelOpt = None,
    configs: Annotated[
        str, typer.Option(help="Comma list of configs, e.g. fp32,bnb-nf4[double_quant=true].")
    ] = ",".join(cfg.DEFAULT_CONFIGS),
    text: TextOpt = None,
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
    tokens: TokensOpt = 4096,
    context: ContextOpt = 512,
    stride: StrideOpt = 0,
    prompts: PromptsOpt = None,
    tasks: Annotated[
        str,
        typer.Option(
            help="Comma list of tasks scored by log-likelihood: cloze, FILE.jsonl (multiple choice), an lm-eval task name or .yaml file."
        ),
    ] = "",
    task_limit: Annotated[int, typer.Option(help="Items per task at most.")] = 200,
    html_path: HtmlOpt = None,
    json_path: JsonOpt = None,
    store: StoreOpt = None,
    force: Annotated[bool, typer.Option(help="Re-measure configs already in the store.")] = False,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    dtype: Annotated[cfg.DType, typer.Option(help="Precision of the baseline.")] = cfg.DType.FP32,
    batch_size: BatchOpt = 4,
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
    max_new_tokens: NewTokensOpt = 40,
    speed_reps: SpeedRepsOpt = 3,
    revision: Annotated[
        str | None, typer.Option(help="Hub revision (branch, tag or commit).")
    ] = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
    margin: MarginOpt = None,
    until_decided: Annotated[
        bool,
        typer.Option(
            help="Score the windows in a seeded random order and stop each config once its verdicts at --margin (ppl, kl) are resolved, with group-sequential boundaries: clear cases take a fraction of the tokens."
        ),
    ] = False,
    spending: Annotated[
        str,
        typer.Option(
            help="How --until-decided spends alpha over its looks: pocock (evenly; early stops), obrien-fleming (little early) or linear."
        ),
    ] = cfg.DEFAULT_SPENDING,
    device_map: Annotated[
        str | None,
        typer.Option(
            help="Where the configs' layers go: auto, balanced, balanced_low_0, sequential or a device (accelerate); default: the --device."
        ),
    ] = None,
    max_memory: Annotated[
        str | None,
        typer.Option(
            help="Memory per device for auto placement, e.g. 0=20GiB,cpu=64GiB (with --device-map or --baseline-device-map)."
        ),
    ] = None,
    offload_dir: Annotated[
        Path | None,
        typer.Option(help="Folder for the layers that fit nowhere in --max-memory (disk offload)."),
    ] = None,
    baseline_device_map: Annotated[
        str | None,
        typer.Option(
            help="Where the baseline's layers go (it is needed once, for the reference pass); default: on the device if it fits, else offloaded to CPU and disk."
        ),
    ] = None,
    depths: Annotated[
        str | None,
        typer.Option(
            help="Context depths for KV-cache bytes and prefill/decode speed, e.g. 0,1k,4k,8k; default: those four (up to the model's positions) for configs with +kv=, none for others."
        ),
    ] = None,
    engine_port: Annotated[
        int,
        typer.Option(
            help="Port on 127.0.0.1 for the serving engine of +engine= configs (0: a free one)."
        ),
    ] = 0,
    concurrency: Annotated[
        str,
        typer.Option(help="Requests in flight at each level of a served config's load test."),
    ] = "1,4,16",
    serve_prompt: Annotated[
        int, typer.Option(help="Prompt tokens of each load-test request (cut from the text).")
    ] = 256,
    serve_output: Annotated[
        int, typer.Option(help="Tokens each load-test request generates (EOS ignored).")
    ] = 64,
    serve_requests: Annotated[
        int, typer.Option(help="Load-test requests per level (0: twice the level, at least 8).")
    ] = 0,
    engine_kv_gib: Annotated[
        float, typer.Option(help="The engine's KV-cache space on CPU, GiB (vLLM's own setting).")
    ] = 1.0,
    engine_timeout: Annotated[
        float, typer.Option(help="Seconds a serving engine may take to start.")
    ] = 900.0,
    engine_eager: Annotated[
        bool,
        typer.Option(help="Serve without torch.compile: starts sooner, runs slower."),
    ] = False,
    isolate: Annotated[
        bool | None,
        typer.Option(
            "--isolate/--no-isolate",
            help="Measure each config in a process of its own: a crash, an abort or an out-of-memory kill fails that config, not the run. Default: on when the baseline's weights take 1 GB or more (a process costs a few seconds a config).",
            show_default=False,
        ),
    ] = None,
    config_timeout: Annotated[
        float | None,
        typer.Option(
            help="With --isolate: seconds a config may take before it is stopped and failed."
        ),
    ] = None,
    config_memory: Annotated[
        float | None,
        typer.Option(
            help="With --isolate: MB of address space a config's process may use; past it the config fails."
        ),
    ] = None,
    memory_check: Annotated[
        bool,
        typer.Option(
            help="Skip a config whose expected peak memory (weights as loaded, the pass's working set) exceeds the memory available."
        ),
    ] = True,
) -> None:
    """Measure each config against the full-precision baseline and print one row per config
    (with --margin, each judged equivalent, worse or not resolved at that margin)."""

    spec = by_keyword(run_spec, locals())
    with progress() as bar:
        report = run_one(spec, ProgressEvents(bar))
    show_report(report)
    where = report.provenance.get("store", "")
    found = None
    if margin and report.results:
        found = stored.judge(judge_spec(report, margin=margin, store=where))
        print_verdicts(found, report)
    _answer(report, found, margin, store)
    html = ""
    if html_path:
        html = run_html(judge_spec(report, margin=margin, store=where))
    body = report.to_dict()
    if found is not None:
        body["decision"] = found.to_dict()
    write_outputs(body, html_path, json_path, html)
    console.print(
        f"Stored in {escape(str(where))} as run {report.run_id}; "
        f"'quantscope report {report.run_id} -o report.html' draws the tradeoff plots."
    )
    if any(o.status is Status.FAILED for o in report.outcomes):
        console.print(f"Each failed config's traceback is in {escape(str(debug_log_path()))}.")
        raise typer.Exit(1)


def _answer(report: RunReport, found: Any, margin: str | None, store: Path | None) -> None:
    """The run's answer after its tables: the decision at ``--margin`` (else the default
    one) in three lines, and the command that prints the chosen config's loading code."""
    if not report.results:
        return
    where = report.provenance.get("store", "")
    try:
        found = found or stored.judge(judge_spec(report, margin=None, store=where))
    except UserError:  # nothing to judge against (no baseline among the results)
        return
    command = f"quantscope recommend {report.run_id}"
    command += f" --margin {margin}" if margin else ""
    command += f" --store {store}" if store else ""
    for line in found.answer(command):
        console.print(Text(line), style="bold")


def show_report(report: RunReport) -> None:
    """A run on the terminal: the results tables, tasks, per-text rows, notes, generations."""

    for table in terminal.results_tables(report, console.width):
        console.print(table)
    extras = (
        terminal.tasks_table(report),
        terminal.sources_table(report),
        terminal.positions_table(report),
        terminal.depth_table(report),
        terminal.serving_table(report, console.width),
    )
    for extra in extras:
        if extra is not None:
            console.print(extra)
    for note in terminal.outcome_notes(report):
        console.print(note, style="yellow")
    console.print(terminal.generations_view(report.results))
