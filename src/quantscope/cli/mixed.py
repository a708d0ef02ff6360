"""Mixed-precision commands: ``sensitivity`` (which units suffer most) and ``search`` (the
smallest mix that meets an accuracy budget, verified and saved as a config file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from quantscope import config as cfg
from quantscope.cli.common import (
    BatchOpt,
    ContextOpt,
    DeviceOpt,
    HtmlOpt,
    JsonOpt,
    ModelOpt,
    NewTokensOpt,
    PickleOpt,
    ProgressEvents,
    PromptsOpt,
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
from quantscope.mixed import search as run_search
from quantscope.mixed import sensitivity as study_units
from quantscope.report.mixed import (
    comparison_table,
    front_table,
    render_study_html,
    sensitivity_table,
    totals_line,
)
from quantscope.specs import by_keyword, search_spec, sensitivity_spec
from quantscope.store import open_existing

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

    spec = by_keyword(sensitivity_spec, locals())
    with progress() as bar:
        study = study_units(spec, ProgressEvents(bar)).to_dict()
    console.print(sensitivity_table(study, top, console.width))
    console.print(escape(totals_line(study)))
    write_outputs(study, html_path, json_path, render_study_html(study) if html_path else "")


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
    text: TextOpt = None,
    tokens: TokensOpt = 4096,
    context: ContextOpt = 512,
    stride: StrideOpt = 0,
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
    speed_reps: SpeedRepsOpt = 3,
    max_new_tokens: NewTokensOpt = 40,
    prompts: PromptsOpt = None,
    html_path: HtmlOpt = None,
    json_path: JsonOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
    kv: Annotated[
        str | None,
        typer.Option(
            help="KV caches to choose among, e.g. dynamic,quanto-int4,hqq-int2: the smallest weights + cache at --context tokens wins (give --calib-context near --context so the cache's error is calibrated)."
        ),
    ] = None,
    until_decided: Annotated[
        bool,
        typer.Option(
            help="Stop each verification run once the budget's limits are decided (group-sequential; see run --until-decided)."
        ),
    ] = False,
) -> None:
    """Keep the fewest units in the fallback precision that meet the budget; verify; save."""

    spec = by_keyword(search_spec, locals())
    with progress() as bar:
        result = run_search(spec, ProgressEvents(bar)).to_dict()
    console.print(front_table(result, console.width))
    compared = comparison_table(result, console.width)
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
        with open_existing(store) as found:
            study = found.get_analysis(result["settings"]["study_key"]) or {}
        html = render_study_html(study, result)
    write_outputs(result, html_path, json_path, html)
    if not result["chosen"]:
        raise typer.Exit(1)
