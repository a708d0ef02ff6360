"""What this machine supports: ``methods``, ``doctor``, and fetching llama.cpp's converter
(``gguf-converter``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from quantscope import backends, capability, toolenv
from quantscope import capability as hw
from quantscope import config as cfg
from quantscope.backends import gguf, gguf_files
from quantscope.cache import cache_dir
from quantscope.cli.common import DeviceOpt, app, console, user_errors
from quantscope.errors import UserError
from quantscope.models import bundled_gguf, resolve_device
from quantscope.provenance import versions


def _availability(device: str) -> list[tuple[str, str, str, str]]:
    """Per registered config name: its backend, its parameters, and whether it runs here."""

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

    table = Table(title=f"Configs (device: {resolve_device(device)})", expand=True)
    table.add_column("config", no_wrap=True)
    table.add_column("backend", no_wrap=True)
    table.add_column("parameters", ratio=3, overflow="fold")  # the room goes to the lists
    table.add_column("available here", ratio=2, overflow="fold")
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

    reason = gguf.BACKEND.available(cfg.Gguf(), "cpu")
    if reason:
        raise UserError(reason)
    folder = gguf_files.fetch_converter(into)
    hint = f"; set {gguf_files.CONVERTER_ENV}={folder} to use it" if into else ""
    console.print(f"llama.cpp's converter is in {escape(str(folder))}{escape(hint)}")


CapabilityOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--capability",
        help="Also show the support table for a CUDA GPU of this compute capability (7.5, 8.0, 8.9, 9.0); repeat for several.",
    ),
]


def _capabilities(values: list[str]) -> list[tuple[int, int]]:
    out = []
    for value in values:
        major, dot, minor = value.strip().partition(".")
        if not (major.isdigit() and (not dot or minor.isdigit())):
            raise UserError(
                f"--capability takes a compute capability like 8.0 or 8.9, got '{value}'."
            )
        out.append((int(major), int(minor or 0)))
    return out


def support_table(devices: list[Any]) -> Table:
    """Each built-in config on each device: native, emulated or unsupported, and why."""

    configs = [cfg.parse_config(n) for n in cfg.names()]
    rows = capability.table(configs, devices)
    table = Table(
        title="configs by device: native, emulated (runs, slower) or unsupported",
        title_justify="left",
    )
    for head in rows[0]:
        table.add_column(head, overflow="fold")
    style = {"native": "green", "emulated": "yellow", "unsupported": "red"}
    for row in rows:
        table.add_row(*(f"[{style[v]}]{v}[/]" if v in style else escape(v) for v in row.values()))
    return table


@app.command()
@user_errors
def doctor(capability: CapabilityOpt = None) -> None:
    """What this machine supports, and why not where it does not; which configs each GPU
    (and any --capability) runs natively, emulated, or not at all."""
    import torch

    device = resolve_device("auto")
    table = Table(title="quantscope doctor", show_header=False)
    table.add_column("what")
    table.add_column("found", overflow="fold")  # a path folds whole, never cut
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
    table.add_row("llama.cpp CPU features", _llama_features())
    table.add_row("llm-compressor environment", _tool(toolenv.LLMCOMPRESSOR))
    table.add_row("vLLM (+engine=vllm)", _vllm(device))
    table.add_row("HF → GGUF converter", _converter())
    try:
        table.add_row("bundled model", str(bundled_gguf()))
    except UserError as err:
        table.add_row("bundled model", str(err))
    cache = cache_dir()
    free = shutil.disk_usage(cache).free / 2**30
    table.add_row("cache", f"{cache} ({free:,.1f} GiB free)")
    console.print(table)

    devices = [hw.this_device("cpu")]
    devices += [hw.this_device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    devices += [hw.Device("cuda", cap) for cap in _capabilities(capability or [])]
    console.print(support_table(devices))


def _llama_features() -> str:
    """The CPU features the installed llama.cpp uses, and those this CPU has that it does
    not (a build far below the CPU is slower than llama.cpp can be here)."""
    try:
        import llama_cpp
    except ImportError:
        return "llama-cpp-python not installed"

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    used = sorted(capability.llama_features(info) & set(capability.LLAMA_FEATURES.values()))
    found = capability.llama_build_gaps(info, capability.cpu_flags())
    gaps = [g for g in found if not g.startswith("AMX")]
    text = " ".join(used) or "none of AVX…AMX"
    if len(gaps) < len(found):
        text += (
            " — AMX left out on purpose (the Makefile builds without it): ggml's AMX matrix "
            "multiply segfaults in llama_decode on virtualized Sapphire Rapids Xeons "
            "(ggml-org/llama.cpp#20824)"
        )
    if gaps:
        text += (
            f" — this CPU also has {', '.join(gaps)}, which this build does not use: "
            "its GGUF passes are slower than the CPU allows (rebuild llama-cpp-python "
            "with CMAKE_ARGS for them)"
        )
    return text


def _tool(tool: toolenv.Tool) -> str:
    """Whether a tool's own environment is built here, and with which versions."""
    found = toolenv.built(tool)
    if found is None:
        return f"not built yet: built on first use in {toolenv.folder(tool)} ({tool.cost})"
    versions = ", ".join(f"{k} {v}" for k, v in found.get("versions", {}).items())
    return f"{toolenv.folder(tool)} ({versions})"


def _vllm(device: str) -> str:
    """Whether configs can be measured in vLLM here, and why not; its environment."""
    from quantscope.backends.vllm import BACKEND

    why = BACKEND.available(cfg.Precision(precision=cfg.DType.BF16, engine="vllm"), device)
    if why:
        return f"not usable here: {why}"
    return f"usable ({toolenv.vllm_tool().packages[0]}); environment: {_tool(toolenv.vllm_tool())}"


def _converter() -> str:

    if gguf.BACKEND.available(cfg.Gguf(), "cpu"):
        return "needs llama-cpp-python (pip install 'quantscope[gguf]')"
    try:
        return str(gguf_files.converter())
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
