"""What this machine supports: ``methods``, ``doctor``, and fetching llama.cpp's converter
(``gguf-converter``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from quantscope import config as cfg
from quantscope.cli.common import DeviceOpt, app, console, user_errors
from quantscope.errors import UserError


def _availability(device: str) -> list[tuple[str, str, str, str]]:
    """Per registered config name: its backend, its parameters, and whether it runs here."""
    from quantscope import backends

    rows = []
    for name in cfg.names():
        config = cfg.parse_config(name)
        backend = backends.get(config)
        params = ", ".join(f.name for f in type(config).parameters()) or "–"
        rows.append((name, backend.name, params, backend.available(config, device) or "yes"))
    return rows


@app.command()
@user_errors
def methods(device: DeviceOpt = "auto") -> None:
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

    reason = gguf.BACKEND.available(cfg.Gguf(), "cpu")
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

    from quantscope.cache import cache_dir
    from quantscope.models import bundled_gguf, resolve_device
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

    if gguf.BACKEND.available(cfg.Gguf(), "cpu"):
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
