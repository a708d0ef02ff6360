"""Sweeps: the sweep file, the plan (what is stored already), the local executor giving the
numbers ``quantscope run`` gives, resuming, and the models side by side."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import build_tiny_model
from quantscope import runner
from quantscope.cli import app
from quantscope.config import DataSpec, RunSpec, model_spec, parse_config_list
from quantscope.errors import UserError
from quantscope.sweeps import plan, read_sweep, run_sweep
from quantscope.sweeps.sweep_file import parse_sweep


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-b"), seed=1)


def _study_file(folder: Path, models: list[str], text: Path) -> Path:
    body = {
        "name": "two-tiny",
        "models": models,
        "configs": ["fp32", "bf16", "rtn[bits=4,group=32]"],
        "texts": [str(text)],
        "store": "results.sqlite",
        "settings": {
            "tokens": 300,
            "context": 64,
            "stride": 32,
            "speed_reps": 1,
            "max_new_tokens": 3,
            "ref_topk": 16,
        },
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def _accuracy(metrics: dict[str, float]) -> dict[str, float]:
    """Every metric but speed, time and peak memory (measured anew, never equal)."""
    timing = ("tps", "_s", "peak_")
    return {k: v for k, v in metrics.items() if not any(t in k for t in timing)}


def test_a_study_measures_what_run_measures_and_resumes(
    tiny_model_dir: Path, second_model: Path, tiny_text: Path, tmp_path: Path
) -> None:
    study = read_sweep(_study_file(tmp_path, [str(tiny_model_dir), str(second_model)], tiny_text))
    cells = plan(study)
    assert len(cells) == 6 and not any(c.stored for c in cells)
    report = run_sweep(study)
    frame = report.to_dataframe()
    assert list(frame["status"]) == ["measured"] * 6
    assert frame["model"].nunique() == 2
    for model in (tiny_model_dir, second_model):  # the same numbers as a plain run
        alone = runner.run(
            RunSpec(
                model=model_spec(str(model)),
                configs=study.configs,
                data=DataSpec((str(tiny_text),), tokens=300, context=64, stride=32),
                speed_reps=1,
                max_new_tokens=3,
                ref_topk=16,
                store_path=str(tmp_path / "alone.sqlite"),
            )
        )
        swept = next(r for r in report.runs if r.provenance["model_folder"] == str(model))
        for a, b in zip(alone.results, swept.results, strict=True):
            assert _accuracy(a.metrics) == _accuracy(b.metrics) and a.key == b.key
    assert all(c.stored for c in plan(study))  # resumes: nothing left to measure
    again = run_sweep(study).to_dataframe()
    assert list(again["status"]) == ["reused"] * 6


def test_sweep_command_prints_the_plan_and_the_models_side_by_side(
    tiny_model_dir: Path, second_model: Path, tiny_text: Path, tmp_path: Path
) -> None:
    path = _study_file(tmp_path, [str(tiny_model_dir), str(second_model)], tiny_text)
    dry = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    said = " ".join(dry.output.split())
    assert "6 evaluations (2 models × 3 configs × 1 texts); 0 already stored" in said
    result = CliRunner().invoke(app, ["sweep", str(path)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "models side by side" in text and "loses most" in text
    key = text.split("Stored as sweep ")[1].split(";")[0]
    store = str(tmp_path / "results.sqlite")
    shown = CliRunner().invoke(app, ["show", key, "--store", store])
    assert shown.exit_code == 0 and "loses most" in shown.output
    page = tmp_path / "study.html"
    drawn = CliRunner().invoke(app, ["report", "latest-sweep", "--store", store, "-o", str(page)])
    assert drawn.exit_code == 0, drawn.output
    html = page.read_text()
    assert (
        '"barmode":"group"' in html.replace(": ", ":") and html.count("<td>rtn[group=32]</td>") == 1
    )
    missing = CliRunner().invoke(app, ["show", "sweep-nope", "--store", store])
    assert missing.exit_code == 2 and "No sweep 'sweep-nope'" in missing.output
    rerun = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"])
    assert "6 already stored, 0 to measure" in " ".join(rerun.output.split())


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            {"models": ["bundled"], "config": ["fp32"]},
            "Unknown key 'config'.*Did you mean 'configs'",
        ),
        ({"configs": ["fp32"]}, "'models' must be a list"),
        ({"models": ["bundled"], "configs": ["bnb-nf5"]}, "Did you mean 'bnb-nf4'"),
        ({"models": ["bundled"], "configs": ["fp32"], "texts": ["nope.txt"]}, "No such text file"),
        ({"models": [{"model": "bundled", "dtype": "fp8"}], "configs": ["fp32"]}, "dtype must be"),
        ({"models": ["bundled"], "configs": ["fp32"], "settings": {"tokenz": 5}}, "'tokens'"),
        ({"models": ["bundled"], "configs": ["fp32"], "settings": {"stride": 600}}, "--stride"),
    ],
)
def test_study_mistakes_are_one_sentence(body, fragment, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=fragment):
        parse_sweep(body, tmp_path)


def test_a_missing_study_file_is_a_user_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "No such sweep file" in result.output


def test_configs_parse_like_run(tmp_path: Path) -> None:
    configs = "fp32,bnb-nf4[double_quant=true]"
    study = parse_sweep({"models": ["bundled", "org/name"], "configs": configs}, tmp_path)
    assert study.configs == parse_config_list(configs)


def test_a_models_checkpoints_sit_under_it_and_only_its_run_measures_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "quants" / "base-W4A16").mkdir(parents=True)
    body = {
        "models": [
            {"model": "org/base", "checkpoints": ["quants/base-W4A16", "org/base-AWQ@v2"]},
            "org/other",
        ],
        "configs": ["fp32", "bnb-nf4"],
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(body))
    base, other = read_sweep(tmp_path / "study.yaml").runs()
    names = [c.display for c in base.configs]
    assert names == ["fp32", "bnb-nf4", "base-W4A16", "base-AWQ@v2"]
    assert base.configs[2].path == str((tmp_path / "quants" / "base-W4A16").resolve())
    assert base.configs[3].path == "org/base-AWQ" and base.configs[3].revision == "v2"
    assert [c.display for c in other.configs] == ["fp32", "bnb-nf4"]
    with pytest.raises(UserError, match="A checkpoint must be a folder or a hub id"):
        parse_sweep({"models": [{"model": "org/base", "checkpoints": [3]}], "configs": ["fp32"]})
