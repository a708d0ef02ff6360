"""A backend from another installed package, found through the ``quantscope.backends`` entry
point: ``examples/sign_plugin`` (one 34-line module and a pyproject.toml) is installed with pip
into a folder put on sys.path, then shows up in ``quantscope methods``, runs in ``quantscope
run`` and passes the conformance suite like every built-in backend."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conformance import BackendConformance
from conftest import TINY_WINDOWS
from quantscope.cli import app
from quantscope.config import names, parse_config
from quantscope.errors import UserError

PLUGIN = Path(__file__).parents[1] / "examples" / "sign_plugin"


@pytest.fixture(scope="module")
def sign_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The example plug-in installed by pip (its wheel built here, no network) into a folder
    on sys.path, as a separately installed distribution with its entry point; taken off
    sys.path (and its module unloaded) when this file's tests are done, so no other file
    sees it."""
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "sign"
    shutil.copytree(PLUGIN, source)  # the build leaves its files beside the source, not here
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        "--no-build-isolation",
        "--target",
        str(target),
        str(source),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    assert list(target.glob("quantscope_sign-*.dist-info"))
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("quantscope_sign", None)
    importlib.invalidate_caches()


def test_unknown_until_installed_then_listed(sign_plugin: Path) -> None:
    assert "sign" in names()
    config = parse_config("sign[group=32,skip=down_proj]")
    assert config.name == "sign[group=32,skip=down_proj]" and parse_config(config.name) == config
    with pytest.raises(UserError, match="Did you mean 'sign'"):
        parse_config("sigm")
    with pytest.raises(UserError, match="group must be at least 2"):
        parse_config("sign[group=0]")
    listed = CliRunner().invoke(app, ["methods"])
    assert listed.exit_code == 0
    row = next(line for line in listed.output.splitlines() if "sign" in line)
    assert "sign (example" in row and "group" in row and "yes" in row  # the table wraps


def test_runs_in_quantscope_run(sign_plugin: Path, tiny_model_dir, tiny_text, tmp_path) -> None:
    args = [
        "run",
        "--model",
        str(tiny_model_dir),
        "--text",
        str(tiny_text),
        "--configs",
        "fp32,sign",
        *TINY_WINDOWS,
        "--store",
        str(tmp_path / "r.sqlite"),
        "--speed-reps",
        "1",
        "--max-new-tokens",
        "3",
        "--json",
        str(tmp_path / "r.json"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    import json

    sign = json.loads((tmp_path / "r.json").read_text())["configs"][1]
    assert sign["config"] == "sign" and sign["status"] == "measured"
    assert sign["result"]["metrics"]["linear_bits_per_weight"] == pytest.approx(1.25)
    assert "sign (example plug-in)" in sign["result"]["meta"]["library"]


class TestSignPlugin(BackendConformance):
    config = "sign"
    max_kl = 3.0  # measured 2.23 on the tiny model (RTN 2-bit: 2.33); CPU runs are deterministic
    bits = (1.25, 1.25)  # 1 bit + a float16 scale per 64 weights

    @pytest.fixture(scope="class")
    @classmethod
    def model_dir(cls, tiny_model_dir: Path, sign_plugin: Path) -> Path:
        return tiny_model_dir


def test_the_plugin_is_one_short_file() -> None:
    module = PLUGIN / "quantscope_sign.py"
    assert len(module.read_text().splitlines()) <= 40


def test_the_plugin_is_gone_once_its_fixture_is_torn_down(tmp_path_factory) -> None:
    """The fixture's teardown really takes its folder off sys.path and unloads the plug-in
    (run by hand: set up, tear down; this file's own fixture may be set up meanwhile)."""
    fixture = sign_plugin.__wrapped__(tmp_path_factory)  # type: ignore[attr-defined]
    target = next(fixture)
    assert str(target) in sys.path and "sign" in names()
    parse_config("sign")  # loads the plug-in's module
    with pytest.raises(StopIteration):
        next(fixture)
    assert str(target) not in sys.path and "quantscope_sign" not in sys.modules
