"""What every command shares: the typer app, the consoles, and the user-error wrapper."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from quantscope.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Measure what quantizing a language model costs in accuracy and buys in memory and speed.",
)
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn UserError into one sentence on stderr and exit code 2; Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]Interrupted; every config finished so far is stored.[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
