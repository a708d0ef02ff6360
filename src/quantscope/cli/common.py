"""What every command shares: the typer app, the consoles, the user-error wrapper, the
progress bar the runner's events draw, and every option more than one command takes
(declared once here)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from quantscope import chaos
from quantscope.errors import UserError
from quantscope.quiet import Screen, captured
from quantscope.results import Outcome, Status

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Measure what quantizing a language model costs in accuracy and buys in memory and speed.",
)
# the screen, even while the libraries' output is captured
console = Console(file=Screen("stdout"))  # type: ignore[arg-type]
err_console = Console(file=Screen("stderr"))  # type: ignore[arg-type]
F = TypeVar("F", bound=Callable[..., Any])

ModelOpt = Annotated[
    str | None,
    typer.Option(
        help="Hub id, local folder or .gguf file; default: bundled SmolLM2-135M-Instruct."
    ),
]
StoreOpt = Annotated[
    Path | None,
    typer.Option(help="Results database (SQLite); default $QUANTSCOPE_CACHE/results.sqlite."),
]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
BatchOpt = Annotated[int, typer.Option(help="Windows per forward pass.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for every random choice.")]
TrustOpt = Annotated[bool, typer.Option(help="Allow the model repo's own Python code to run.")]
PickleOpt = Annotated[bool, typer.Option(help="Allow loading pickle (.bin) checkpoints.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write everything as JSON here.")]
HtmlOpt = Annotated[Path | None, typer.Option("--report", help="Also write the HTML report here.")]
TextOpt = Annotated[
    list[Path] | None,
    typer.Option(
        help="Text file to evaluate on (.txt, or .jsonl with --field); repeat for several. Default: Python's bundled docs."
    ),
]
TokensOpt = Annotated[int, typer.Option(help="How many tokens of each text to score.")]
ContextOpt = Annotated[int, typer.Option(help="Window length in tokens.")]
StrideOpt = Annotated[
    int,
    typer.Option(
        help="Tokens a window advances (default: half the context); scored tokens keep ≥ context−stride of context."
    ),
]
SpeedRepsOpt = Annotated[int, typer.Option(help="Timed repetitions for prefill and decode speed.")]
NewTokensOpt = Annotated[int, typer.Option(help="Tokens generated per prompt.")]
PromptsOpt = Annotated[Path | None, typer.Option(help="File with one generation prompt per line.")]
FormatOpt = Annotated[str, typer.Option("--format", help="table, md, csv or json.")]
MarginOpt = Annotated[
    str | None,
    typer.Option(
        help="Equivalence margins: ppl in % (ppl=1%), mean KL in nats (kl=0.01), task accuracy in points (acc=1); each config is judged equivalent, worse or not resolved (TOST)."
    ),
]
MaxPplOpt = Annotated[
    str | None,
    typer.Option(
        help="Largest perplexity increase allowed, in % (2%); met only when its 95% upper bound is."
    ),
]
MaxMbOpt = Annotated[float | None, typer.Option(help="Largest weight memory allowed, in MB.")]
MinTpsOpt = Annotated[
    float | None, typer.Option(help="Slowest decode allowed, tokens/s (every timed repetition).")
]
PreferOpt = Annotated[str, typer.Option(help="size (smallest) or speed (fastest decode).")]


def user_errors(fn: F) -> F:
    """Turn UserError into one sentence on stderr and exit code 2; Ctrl-C into exit 130; what
    libraries print meanwhile goes to the debug log."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with captured():
                return fn(*args, **kwargs)
        except UserError as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]Interrupted; every config finished so far is stored.[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def progress() -> Progress:
    """The progress bar every long command draws on stderr (gone when it ends)."""
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    ]
    return Progress(
        *columns, console=err_console, transient=True, redirect_stdout=False, redirect_stderr=False
    )


_COLOUR = {Status.MEASURED: "green", Status.REUSED: "cyan", Status.SKIPPED: "yellow"}


class ProgressEvents:
    """Runner events drawn as a rich progress bar, with a line per finished config."""

    def __init__(self, bar: Progress) -> None:
        self.progress = bar
        self.task = bar.add_task("starting", total=None)

    def stage(self, label: str, total: int | None) -> None:
        self.progress.update(self.task, description=escape(label), total=total, completed=0)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def outcome(self, outcome: Outcome) -> None:
        colour = _COLOUR.get(outcome.status, "red")
        reason = f": {escape(outcome.reason)}" if outcome.reason else ""
        self.progress.console.print(
            f"[{colour}]{outcome.status.value}[/] {escape(outcome.config)}{reason}"
        )


def write_outputs(body: Any, html_path: Path | None, json_path: Path | None, html: str) -> None:
    """Write the HTML and JSON a command was asked for, and say where."""
    import json

    if html_path:
        _whole(html_path, html)
        console.print(f"HTML report written to {escape(str(html_path))}")
    if json_path:
        _whole(json_path, json.dumps(body, indent=2, default=str))
        console.print(f"JSON written to {escape(str(json_path))}")


def _whole(path: Path, text: str) -> None:
    """``text`` written to ``path`` whole or not at all (a file beside it, then renamed)."""
    for stale in path.parent.glob(f".{path.name}.*.part"):  # left by a killed writer
        stale.unlink(missing_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    part.write_text(text, encoding="utf-8")
    chaos.point("report")
    os.replace(part, path)
