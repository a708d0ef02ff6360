"""``quantscope recover``: train LoRA adapters on a quantized config toward the baseline and
report how much of the gap they close."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from quantscope.cli.common import (
    ContextOpt,
    DeviceOpt,
    JsonOpt,
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
    err_console,
    progress,
    user_errors,
    write_outputs,
)
from quantscope.recovery import adapter_folder
from quantscope.recovery import recover as run_recover
from quantscope.report.mixed import recovery_table
from quantscope.specs import by_keyword, recover_spec


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
    text: TextOpt = None,
    tokens: TokensOpt = 4096,
    context: ContextOpt = 512,
    stride: StrideOpt = 0,
    out: Annotated[
        Path | None, typer.Option(help="Adapter folder; default adapters/CONFIG-lora-rRANK.")
    ] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    store: StoreOpt = None,
    speed_reps: SpeedRepsOpt = 3,
    max_new_tokens: NewTokensOpt = 40,
    prompts: PromptsOpt = None,
    json_path: JsonOpt = None,
    trust_remote_code: TrustOpt = False,
    allow_pickle: PickleOpt = False,
) -> None:
    """Train LoRA adapters on a quantized config toward the baseline and report how much of
    the KL and perplexity gap they close, on evaluation text never trained on."""

    spec = by_keyword(recover_spec, locals())
    with progress() as bar:
        events = ProgressEvents(bar)

        def on_step(step: int, loss: float, kl: float) -> None:
            bar.update(events.task, description=f"training: step {step}, loss {loss:.4f}")

        try:
            result = run_recover(spec, events, on_step).to_dict()
        except KeyboardInterrupt:
            where = adapter_folder(spec)
            err_console.print(
                f"[yellow]Interrupted; the adapter trained so far is saved in {escape(where)}.[/]"
            )
            raise typer.Exit(130) from None
    console.print(recovery_table(result, console.width))
    t = result["training"]
    console.print(
        f"Trained {t['steps']} steps in {t['seconds']:.0f} s on {t['train_tokens']:,} tokens of "
        f"{escape(t['train_text'])}; adapter {t['trainable_params']:,} parameters, "
        f"{t['adapter_bytes'] / 2**20:.2f} MB, saved in {escape(t['adapter'])}."
    )
    console.print(f"Reuse it: quantscope run --configs '{escape(result['recovered_config'])}'")
    write_outputs(result, None, json_path, "")
