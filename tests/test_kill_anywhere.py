"""Killed anywhere, resumed exactly: ``quantscope run`` killed with SIGKILL at seeded moments
(``QUANTSCOPE_KILL_AT``, :mod:`quantscope.chaos`) — loading the baseline, streaming the
reference to disk, mid-scoring, inside a result's transaction (between its per-token values
and its row), while the report is written — and run again after each; at the end the stored
results equal an uninterrupted run's, every accuracy metric to the bit, the database passes
``PRAGMA integrity_check``, no temporary file or held lock is left, and the reference that
was once complete was never made again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from conftest import TINY_WINDOWS, stored_accuracy, tiny_run
from quantscope.chaos import PHASES

CONFIGS = "fp32,bf16,rtn[bits=8,group=32],rtn[bits=4,group=32],bnb-nf4"
# the runs go through the phases in this order, each killed at a seeded count among those it
# surely reaches, every earlier kill considered: 1 baseline load; 3 reference chunks (9
# windows in batches of 4); a row per config (5, of which 3 are surely left after two kills);
# 3 scoring batches a config (of the 3 configs or more still to measure); 2 reports
ORDER = ("baseline-load", "reference-chunk", "store-row", "scoring-batch", "report")
REACHED = {
    "baseline-load": 1,
    "reference-chunk": 3,
    "store-row": 3,
    "scoring-batch": 9,
    "report": 2,
}
SEED = 0


def kill_points() -> list[str]:
    """Two seeded moments of each phase (one where a phase has one), in the run's order."""
    rng = random.Random(SEED)
    points = []
    for phase in ORDER:
        counts = sorted(rng.sample(range(1, REACHED[phase] + 1), min(2, REACHED[phase])))
        points += [f"{phase}:{n}" for n in counts]
    return points


def _cli(args: list[str], cache: Path, kill: str | None) -> subprocess.CompletedProcess[str]:
    """quantscope in a process of its own, with its cache, killed at ``kill`` if given."""
    env = {**os.environ, "QUANTSCOPE_CACHE": str(cache)}
    env.pop("QUANTSCOPE_KILL_AT", None)
    env.update({"QUANTSCOPE_KILL_AT": kill} if kill else {})
    command = [sys.executable, "-c", "from quantscope.cli import main; main()", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def _run(folder: Path, cache: Path, model: Path, text: Path, kill: str | None):
    outputs = [
        "--store",
        str(folder / "r.sqlite"),
        "--report",
        str(folder / "report.html"),
        "--json",
        str(folder / "run.json"),
    ]
    return _cli(tiny_run(model, text, CONFIGS, *outputs), cache, kill)


def _made_by(cache: Path) -> dict[str, str]:
    """Who made each complete artifact of the reference folder (its record's ``made_by``)."""
    found = {}
    for path in (cache / "reference").glob("*.json"):
        body = json.loads(path.read_text())
        if isinstance(body, dict) and "made_by" in body:
            found[path.name] = body["made_by"]
    return found


@pytest.mark.slow
def test_killed_anywhere_then_resumed_gives_the_uninterrupted_numbers(
    tiny_model_dir: Path, tiny_text: Path, tmp_path: Path
) -> None:
    pytest.importorskip("bitsandbytes", reason="one config of the run is bnb-nf4")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    done = _run(whole, tmp_path / "cache-whole", tiny_model_dir, tiny_text, None)
    assert done.returncode == 0, done.stderr[-2000:]
    cache = tmp_path / "cache-cut"
    killed, first_made = [], {}
    for point in kill_points():
        ended = _run(cut, cache, tiny_model_dir, tiny_text, point)
        assert ended.returncode in (-signal.SIGKILL, 0), ended.stderr[-2000:]
        if ended.returncode == -signal.SIGKILL:
            killed.append(point)
        first_made = first_made or _made_by(cache)  # the reference, once complete
        if cut.joinpath("r.sqlite").exists():
            stored_accuracy(cut / "r.sqlite")  # readable and whole after every kill
    assert {p.split(":")[0] for p in killed} == set(PHASES), killed  # every phase was hit
    final = _run(cut, cache, tiny_model_dir, tiny_text, None)
    assert final.returncode == 0, final.stderr[-2000:]
    assert stored_accuracy(cut / "r.sqlite") == stored_accuracy(whole / "r.sqlite")  # to the bit
    assert json.loads((cut / "run.json").read_text())["run_id"]  # the report files are whole
    assert (cut / "report.html").read_text().rstrip().endswith("</html>")
    leftovers = [p for p in [*cache.rglob("*"), *cut.iterdir()] if p.suffix in (".tmp", ".part")]
    assert not leftovers, leftovers
    for lock in cache.rglob("*.lock"):  # a lock file may stay; no lock may be held
        try:
            with FileLock(str(lock), timeout=0):
                pass
        except Timeout:
            pytest.fail(f"{lock} is still held")
    assert first_made and _made_by(cache) == first_made  # not made twice


@pytest.mark.integration
@pytest.mark.parametrize(
    ("phase", "configs", "bundled"),
    [
        ("gguf-quantize", "fp32,gguf[qtype=Q8_0]", True),  # llama.cpp re-quantizes its file
        ("gptq-calibration", "fp32,gptq[bits=4,group=32]", False),
    ],
)
def test_killed_while_an_artifact_is_made_it_is_made_once_more_and_whole(
    phase: str, configs: str, bundled: bool, tiny_model_dir: Path, tiny_text: Path, tmp_path: Path
) -> None:
    """Killed after llama.cpp wrote its quantized file (or gptqmodel calibrated) but before
    the file is in place: the next run finds the leftover, removes it, makes the artifact
    again and measures the numbers an uninterrupted run measures."""
    pytest.importorskip("llama_cpp" if bundled else "gptqmodel", reason=f"{phase} needs it")
    where = [] if bundled else ["--model", str(tiny_model_dir), "--text", str(tiny_text)]
    windows = ["--tokens", "256", "--context", "128", "--stride", "64"] if bundled else TINY_WINDOWS

    def run(folder: Path, cache: Path, kill: str | None) -> subprocess.CompletedProcess[str]:
        args = [
            "run",
            *where,
            "--configs",
            configs,
            *windows,
            "--speed-reps",
            "1",
            "--max-new-tokens",
            "3",
            "--store",
            str(folder / "r.sqlite"),
        ]
        return _cli(args, cache, kill)

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    assert run(whole, tmp_path / "cache-whole", None).returncode == 0
    cache = tmp_path / "cache-cut"
    killed = run(cut, cache, f"{phase}:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = [p for p in cache.rglob("*.tmp")]
    assert left, "the killed maker leaves its temporary file"  # (what the next run cleans)
    final = run(cut, cache, None)
    assert final.returncode == 0, final.stderr[-2000:]
    assert not list(cache.rglob("*.tmp"))
    assert stored_accuracy(cut / "r.sqlite") == stored_accuracy(whole / "r.sqlite")
