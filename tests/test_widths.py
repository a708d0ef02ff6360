"""Every command's terminal output at 80, 120 and 200 columns: no line wider than the terminal,
nothing cut with "…", every config name and run id whole on one line (they are copied)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import TINY_WINDOWS, build_tiny_model
from quantscope.cli import app

WIDTHS = (80, 120, 200)
LONG = "rtn[bits=3,group=16,skip=down_proj,sym=false]"  # a long (canonical) name, quick to run
CONFIGS = f"fp32,bf16,{LONG}"


def _window(model: Path, text: Path) -> list[str]:
    return ["--model", str(model), "--text", str(text), *TINY_WINDOWS]


def _show(args: list[str], width: int) -> str:
    result = CliRunner().invoke(app, args, env={"COLUMNS": str(width)})
    assert result.exit_code in (0, 1), result.output  # 1: a search that missed its budget
    assert "Traceback" not in result.output
    return result.output


def _readable(out: str, width: int, whole: tuple[str, ...], what: str) -> None:
    # the loading code recommend prints last is printed plainly, unwrapped: it copies as it runs
    lines = out.split("The code that loads it")[0].splitlines()
    widest = max(lines, key=len)
    assert len(widest) <= width, f"{what} at {width}: a line of {len(widest)}: {widest!r}\n{out}"
    cut = [line for line in lines if "…" in line]
    assert not cut, f"{what} at {width} cuts: {cut[:3]}\n{out}"
    for name in whole:
        assert any(name in line for line in lines), f"{what} at {width}: '{name}' not whole\n{out}"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_text: Path):
    """A store with two runs of three configs, a sweep file over two models, and the ids."""
    folder = tmp_path_factory.mktemp("widths")
    store = str(folder / "r.sqlite")
    other = build_tiny_model(folder / "second-tiny-model-with-a-long-name", seed=1)
    base = [
        *_window(tiny_model_dir, tiny_text),
        "--configs",
        CONFIGS,
        "--store",
        store,
        "--speed-reps",
        "1",
        "--max-new-tokens",
        "3",
    ]
    for seed in ("0", "1"):
        assert CliRunner().invoke(app, ["run", *base, "--seed", seed]).exit_code == 0
    runs = json.loads(
        CliRunner().invoke(app, ["runs", "--store", store, "--format", "json"]).output
    )
    sweep = folder / "sweep.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "models": [str(tiny_model_dir), str(other)],
                "configs": ["bf16", LONG],
                "texts": [str(tiny_text)],
                "store": store,
                "settings": {
                    "tokens": 300,
                    "context": 64,
                    "stride": 32,
                    "speed_reps": 1,
                    "max_new_tokens": 3,
                },
            }
        )
    )
    return {
        "store": store,
        "base": base,
        "new": runs[0]["run"],
        "old": runs[1]["run"],
        "sweep": str(sweep),
        "model": tiny_model_dir,
        "text": tiny_text,
        "folder": folder,
    }


def _commands(s: dict) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    store = ["--store", s["store"]]
    study = [
        "--model",
        str(s["model"]),
        "--config",
        LONG,
        "--calib-tokens",
        "300",
        "--calib-context",
        "64",
        "--calib-stride",
        "48",
        *store,
    ]
    names = ("fp32", "bf16", LONG)
    return {
        "run": (["run", *s["base"], "--margin", "ppl=50%,kl=0.5"], names),
        "show": (["show", s["old"], *store], (*names, s["old"])),
        "show --margin": (["show", s["old"], *store, "--margin", "ppl=2%,kl=0.02"], names),
        "compare": (["compare", s["old"], s["new"], *store], names),
        "compare --pair": (["compare", s["old"], "--pair", f"bf16,{LONG}", *store], (LONG,)),
        "recommend": (["recommend", s["old"], *store, "--max-ppl-increase", "900%"], ()),
        "runs": (["runs", *store], (s["old"], s["new"])),
        "methods": (["methods"], ("rtn", "llmc-w4a16")),
        "doctor": (["doctor"], ()),
        "sweep": (["sweep", s["sweep"]], (LONG,)),
        "sensitivity": (["sensitivity", *study], ()),
        "search": (
            [
                "search",
                *study,
                "--fallback",
                "bf16",
                "--max-ppl-increase",
                "1000%",
                "--save",
                str(s["folder"] / "mix.json"),
                *_window(s["model"], s["text"]),
            ],
            (LONG,),
        ),
    }


@pytest.mark.parametrize("width", WIDTHS)
def test_every_command_fits_the_terminal(stored, width: int) -> None:
    for what, (args, whole) in _commands(stored).items():
        _readable(_show(args, width), width, whole, what)


def test_recover_fits_the_terminal(stored) -> None:
    pytest.importorskip("peft", reason="recover trains LoRA adapters with peft")
    pytest.importorskip("bitsandbytes", reason="the recovered config is bnb-nf4")
    args = [
        "recover",
        "--model",
        str(stored["model"]),
        "--config",
        "bnb-nf4",
        "--steps",
        "2",
        "--rank",
        "4",
        "--seq-len",
        "64",
        *_window(stored["model"], stored["text"]),
        "--out",
        str(stored["folder"] / "ad"),
        "--store",
        stored["store"],
    ]
    for width in WIDTHS:
        _readable(_show(args, width), width, ("bnb-nf4",), "recover")


def test_the_check_catches_a_cut_and_a_wide_line() -> None:
    with pytest.raises(AssertionError, match="cuts"):
        _readable("│ bnb-i… │", 80, (), "x")
    with pytest.raises(AssertionError, match="a line of 81"):
        _readable("x" * 81, 80, (), "x")
    with pytest.raises(AssertionError, match="not whole"):
        _readable("│ rtn[bits=4, │\n│ group=16]  │", 80, ("rtn[bits=4,group=16]",), "x")


def test_native_output_goes_to_the_debug_log_not_the_screen(capfd, tmp_path, monkeypatch):
    """What C/C++ code writes straight to descriptors 1 and 2 (Ray's core worker: its
    "network_util.cc:330: Failed to determine local IP" line), and what a child process
    started meanwhile prints, lands in the debug log; the screen has it back afterwards."""
    import os
    import subprocess
    import sys

    from quantscope.quiet import native_output

    monkeypatch.setenv("QUANTSCOPE_DEBUG_LOG", str(tmp_path / "debug.log"))
    with native_output() as log:
        os.write(2, b"network_util.cc:330: Failed to determine local IP\n")
        subprocess.run([sys.executable, "-c", "print('from a child')"], check=True)
    os.write(1, b"ours\n")
    screen = capfd.readouterr()
    assert "network_util" not in screen.err and "from a child" not in screen.out
    assert screen.out == "ours\n"
    assert "network_util.cc:330" in log.read_text() and "from a child" in log.read_text()


def test_prose_columns_wrap_at_spaces_and_the_rest_stay_whole():
    from rich.console import Console

    from quantscope.report.fit import fitted

    rows = [
        {
            "run": f"20261206-0519{i}3-05049a",
            "model": "SmolLM2-135M-Instruct (bundled Q4_1 GGUF, de-quantized)",
            "configs": "5",
            "tokens": "4,096",
        }
        for i in range(3)
    ]
    for width in WIDTHS:
        console = Console(record=True, width=width)
        console.print(fitted(rows, ("run",), width, "runs", prose=("model",), left=("model",)))
        out = console.export_text()
        _readable(out, width, tuple(r["run"] for r in rows), "runs")
        assert ("de-quantized)" in out) and ("4,096" in out)
        one_line = "SmolLM2-135M-Instruct (bundled Q4_1 GGUF, de-quantized)" in out
        assert one_line == (width >= 120)  # wrapped only where it must be
