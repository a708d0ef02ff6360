"""Mixed-precision commands: ``sensitivity`` (which units suffer most) and ``search`` (the
smallest mix that meets an accuracy budget, verified and saved as a config file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from quantscope import config as cfg
from quantscope.cli.common import app, console, err_console, user_errors
from quantscope.cli.measure import ProgressEvents

ModelOpt = Annotated[
    str | None, typer.Option(help="Hub id, local folder or .gguf file; default: bundled model.")
]
ConfigOpt = Annotated[str, typer.Option(help="The quantized config to study, e.g. bnb-nf4.")]
FallbackOpt = Annotated[
    cfg.DType | None,
    typer.Option(help="Precision of what is not quantized; default: the baseline's."),
]
ByOpt = Annotated[str, typer.Option(help="Unit: block (all linears of a layer) or linear.")]
CalibOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--calib-text",
        help="Calibration text file(s); default: the training part of the bundled text.",
    ),
]
CalibTokensOpt = Annotated[int, typer.Option(help="Calibration tokens scored.")]
CalibContextOpt = Annotated[int, typer.Option(help="Calibration window length.")]
CalibStrideOpt = Annotated[int, typer.Option(help="Calibration window advance.")]
StoreOpt = Annotated[Path | None, typer.Option(help="Results database (SQLite).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
BatchOpt = Annotated[int, typer.Option(help="Windows per forward pass.")]
HtmlOpt = Annotated[
    Path | None, typer.Option("--report", help="Write the heatmaps and table as HTML here.")
]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write everything as JSON here.")]
TrustOpt = Annotated[bool, typer.Option(help="Allow the model repo's own Python code to run.")]
PickleOpt = Annotated[bool, typer.Option(help="Allow loading pickle (.bin) checkpoints.")]


def _study_spec(
    model: str | None, config: str, fallback: cfg.DType | None, by: str, modes: str,
    calib_text: list[Path] | None, calib_tokens: int, calib_context: int, calib_stride: int,
    device: str, batch_size: int, store: Path | None, trust_remote_code: bool, allow_pickle: bool,
) -> object:  # fmt: skip
    from quantscope.mixed import StudySpec

    return StudySpec(
        model=cfg.model_spec(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle),
        config=cfg.parse_config(config),
        fallback=fallback,
        by=by,
        calib=cfg.DataSpec(
            texts=tuple(str(p) for p in calib_text or ()),
            tokens=calib_tokens,
            context=calib_context,
            stride=calib_stride,
        ),
        modes=tuple(m.strip() for m in modes.split(",") if m.strip()),
        device=device,
        batch_size=batch_size,
        store_path=str(store) if store else None,
    )


def _progress() -> Progress:
    columns = [TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn()]  # fmt: skip
    return Progress(*columns, console=err_console, transient=True)


@app.command()
@user_errors
def sensitivity(
    config: ConfigOpt,
    model: ModelOpt = None,
    fallback: FallbackOpt = None,
    by: ByOpt = "block",
    modes: Annotated[
        str, typer.Option(help="only (just the unit quantized), all-but (all but the unit).")
    ] = "only,all-but",
    calib_text: CalibOpt = None,
    calib_tokens: CalibTokensOpt = 1024,
    calib_context: CalibContextOpt = 256,
    calib_stride: CalibStrideOpt = 192,
    top: Annotated[int, typer.Option(help="Units shown in the table.")] = 15,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 4,
    store: StoreOpt = None,
    html_path: HtmlOpt = None,
    json_path: JsonOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
) -> None:
    """Quantize one unit at a time (and all but one) and rank the units by the KL they cause."""
    from quantscope.mixed import sensitivity as study_units
    from quantscope.report.mixed import render_study_html, sensitivity_table, totals_line

    spec = _study_spec(model, config, fallback, by, modes, calib_text, calib_tokens,
                       calib_context, calib_stride, device, batch_size, store,
                       trust_remote_code, allow_pickle)  # fmt: skip
    with _progress() as progress:
        study = study_units(spec, ProgressEvents(progress)).to_dict()  # type: ignore[arg-type]
    console.print(sensitivity_table(study, top))
    console.print(escape(totals_line(study)))
    _write(study, html_path, json_path, render_study_html(study) if html_path else "")


def _write(
    body: dict[str, object], html_path: Path | None, json_path: Path | None, html: str
) -> None:
    if html_path:
        html_path.write_text(html, encoding="utf-8")
        console.print(f"HTML written to {escape(str(html_path))}")
    if json_path:
        json_path.write_text(json.dumps(body, indent=2, default=str), encoding="utf-8")
        console.print(f"JSON written to {escape(str(json_path))}")


@app.command()
@user_errors
def search(
    config: ConfigOpt,
    max_kl: Annotated[float | None, typer.Option(help="Largest mean KL allowed.")] = None,
    max_ppl_increase: Annotated[
        str | None, typer.Option(help="Largest perplexity increase, e.g. 2%.")
    ] = None,
    max_mb: Annotated[float | None, typer.Option(help="Largest weight MB allowed.")] = None,
    model: ModelOpt = None,
    fallback: FallbackOpt = None,
    by: ByOpt = "block",
    modes: Annotated[
        str, typer.Option(help="Sensitivity modes measured to order the units.")
    ] = "all-but",
    text: Annotated[
        list[Path] | None, typer.Option(help="Evaluation text for the verification run.")
    ] = None,
    tokens: Annotated[int, typer.Option(help="Evaluation tokens of the verification.")] = 4096,
    context: Annotated[int, typer.Option(help="Evaluation window length.")] = 512,
    stride: Annotated[int, typer.Option(help="Evaluation window advance.")] = 256,
    calib_text: CalibOpt = None,
    calib_tokens: CalibTokensOpt = 1024,
    calib_context: CalibContextOpt = 256,
    calib_stride: CalibStrideOpt = 192,
    tries: Annotated[int, typer.Option(help="Verifications at most.")] = 3,
    save: Annotated[
        Path | None, typer.Option(help="Config file to write; default ./LABEL.json.")
    ] = None,
    label: Annotated[str | None, typer.Option(help="Name of the saved config.")] = None,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 4,
    store: StoreOpt = None,
    html_path: HtmlOpt = None,
    json_path: JsonOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
) -> None:
    """Keep the fewest units in the fallback precision that meet the budget; verify; save."""
    from quantscope.mixed import Budget, SearchSpec
    from quantscope.mixed import search as run_search
    from quantscope.report.mixed import comparison_table, front_table, render_study_html

    study_spec = _study_spec(model, config, fallback, by, modes, calib_text, calib_tokens,
                             calib_context, calib_stride, device, batch_size, store,
                             trust_remote_code, allow_pickle)  # fmt: skip
    budget = Budget(max_kl, _percent(max_ppl_increase), max_mb)
    evaluation = cfg.DataSpec(
        texts=tuple(str(p) for p in text or ()), tokens=tokens, context=context, stride=stride
    )
    spec = SearchSpec(study_spec, budget, evaluation, tries, str(save) if save else None, label)  # type: ignore[arg-type]
    with _progress() as progress:
        result = run_search(spec, ProgressEvents(progress)).to_dict()
    console.print(front_table(result))
    compared = comparison_table(result)
    if compared is not None:
        console.print(compared)
    colour = "green" if result["chosen"] else "yellow"
    console.print(f"[{colour}]{escape(result['message'])}[/]")
    if result["saved"]:
        console.print(
            f"Saved as {escape(result['saved'])}; use it with "
            f"'quantscope run --configs {escape(result['saved'])}'."
        )
    elif result["closest"]:
        c = result["closest"]
        console.print(
            f"Closest: {c['kept']} units kept, KL {c['kl']:.4g}, Δppl {c['dppl_pct']:.3g}%."
        )
    html = ""
    if html_path:
        from quantscope.runner import default_store
        from quantscope.store import Store

        found = Store(store or default_store())
        html = render_study_html(found.get_study(result["settings"]["study_key"]) or {}, result)
        found.close()
    _write(result, html_path, json_path, html)
    if not result["chosen"]:
        raise typer.Exit(1)


def _percent(text: str | None) -> float | None:
    """'2%' or '2' → 2.0."""
    if text is None:
        return None
    try:
        return float(text.strip().rstrip("%"))
    except ValueError:
        from quantscope.errors import UserError

        raise UserError(f"--max-ppl-increase must be a percentage like 2%, got '{text}'.") from None


@app.command()
@user_errors
def recover(
    config: Annotated[str, typer.Option(help="The quantized config to recover, e.g. bnb-nf4.")],
    model: ModelOpt = None,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    alpha: Annotated[int, typer.Option(help="LoRA alpha (scale = alpha / rank).")] = 32,
    dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.0,
    targets: Annotated[
        str, typer.Option(help="Comma list of module names to adapt, or all-linear.")
    ] = "all-linear",
    steps: Annotated[int, typer.Option(help="Training steps.")] = 200,
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop training after this many minutes.")
    ] = None,
    lr: Annotated[
        float, typer.Option(help="Peak learning rate (AdamW, warm-up, linear decay).")
    ] = 1e-3,
    seq_len: Annotated[int, typer.Option(help="Training sequence length in tokens.")] = 256,
    train_batch: Annotated[int, typer.Option(help="Sequences per training step.")] = 4,
    kl_weight: Annotated[
        float,
        typer.Option(help="1: distil toward the baseline; 0: next-token loss; between: a mix."),
    ] = 1.0,
    train_text: Annotated[
        list[Path] | None,
        typer.Option(help="Training text file(s); default: the training part of the bundled text."),
    ] = None,
    text: Annotated[
        list[Path] | None, typer.Option(help="Evaluation text; default: the bundled one.")
    ] = None,
    tokens: Annotated[int, typer.Option(help="Evaluation tokens.")] = 4096,
    context: Annotated[int, typer.Option(help="Evaluation window length.")] = 512,
    stride: Annotated[int, typer.Option(help="Evaluation window advance.")] = 256,
    out: Annotated[
        Path | None, typer.Option(help="Adapter folder; default adapters/CONFIG-lora-rRANK.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and data order.")] = 0,
    device: DeviceOpt = "auto",
    store: StoreOpt = None,
    json_path: JsonOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
) -> None:
    """Train LoRA adapters on a quantized config toward the baseline and report how much of
    the KL and perplexity gap they close, on evaluation text never trained on."""
    from quantscope.recover import RecoverSpec, adapter_folder
    from quantscope.recover import recover as run_recover
    from quantscope.report.mixed import recovery_table

    spec = RecoverSpec(
        model=cfg.model_spec(model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle),
        config=cfg.parse_config(config), rank=rank, alpha=alpha, dropout=dropout,
        targets=tuple(t.strip() for t in targets.split(",") if t.strip()), steps=steps,
        max_minutes=max_minutes, lr=lr, seq_len=seq_len, batch_size=train_batch,
        kl_weight=kl_weight,
        train=cfg.DataSpec(texts=tuple(str(p) for p in train_text or ()), tokens=1_000_000,
                           context=seq_len, stride=seq_len - 1),
        evaluation=cfg.DataSpec(texts=tuple(str(p) for p in text or ()), tokens=tokens,
                                context=context, stride=stride),
        out=str(out) if out else None, device=device, seed=seed,
        store_path=str(store) if store else None,
    )  # fmt: skip
    with _progress() as progress:
        events = ProgressEvents(progress)

        def on_step(step: int, loss: float, kl: float) -> None:
            progress.update(events.task, description=f"training: step {step}, loss {loss:.4f}")

        try:
            result = run_recover(spec, events, on_step).to_dict()
        except KeyboardInterrupt:
            where = adapter_folder(spec)
            err_console.print(
                f"[yellow]Interrupted; the adapter trained so far is saved in {escape(where)}.[/]"
            )
            raise typer.Exit(130) from None
    console.print(recovery_table(result))
    t = result["training"]
    console.print(
        f"Trained {t['steps']} steps in {t['seconds']:.0f} s on {t['train_tokens']:,} tokens of "
        f"{escape(t['train_text'])}; adapter {t['trainable_params']:,} parameters, "
        f"{t['adapter_bytes'] / 2**20:.2f} MB, saved in {escape(t['adapter'])}."
    )
    console.print(f"Reuse it: quantscope run --configs '{escape(result['recovered_config'])}'")
    _write(result, None, json_path, "")
