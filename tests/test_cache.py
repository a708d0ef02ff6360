"""Cached artifacts are made once, atomically, even when processes race for them, and a holder
killed with SIGKILL never blocks the next one (``quantscope.cache.made``)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

from quantscope.cache import made, read_made, sidecar


def _make_slowly(target: str, log: str, start: float) -> None:
    """Wait for a common start time, then make ``target`` (2 s of work), logging each make."""
    time.sleep(max(0.0, start - time.time()))

    def make(tmp: Path) -> dict[str, float]:
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        tmp.mkdir()
        for i in range(4):
            (tmp / f"part-{i}").write_text(str(i))
            time.sleep(0.5)
        return {"seconds": 2.0}

    meta = made(Path(target), make)
    assert meta["seconds"] == 2.0
    assert sorted(p.name for p in Path(target).iterdir()) == [f"part-{i}" for i in range(4)]


def test_two_processes_make_one_artifact_once(tmp_path: Path) -> None:
    target, log = tmp_path / "artifact", tmp_path / "makers.log"
    start = time.time() + 1.0
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_make_slowly, args=(str(target), str(log), start)) for _ in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().split()) == 1  # made once; the other waited and reused it
    assert read_made(target)["made_by"].endswith(":" + log.read_text().split()[0])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _hold_and_hang(target: str, ready: str) -> None:
    def make(tmp: Path) -> dict[str, float]:
        tmp.write_text("half")
        Path(ready).write_text("holding")
        time.sleep(600)
        return {}

    made(Path(target), make)


def test_a_holder_killed_with_sigkill_does_not_block_the_next(tmp_path: Path) -> None:
    target, ready = tmp_path / "artifact.bin", tmp_path / "ready"
    holder = mp.get_context("spawn").Process(target=_hold_and_hang, args=(str(target), str(ready)))
    holder.start()
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert ready.exists()
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    assert read_made(target) is None  # half an artifact never counts as made
    started = time.time()
    meta = made(target, lambda tmp: tmp.write_text("whole") and {"by": "second"})
    assert time.time() - started < 5  # the kernel released the dead holder's lock
    assert meta["by"] == "second" and target.read_text() == "whole"
    assert json.loads(sidecar(target).read_text()) == meta


def test_two_runs_started_together_share_one_cache_and_store(
    tiny_model_dir: Path, tiny_text: Path, tmp_path: Path
) -> None:
    """Two ``quantscope run``s at once on one cache folder and one results database (before,
    one failed: each removed the other's temporary reference folder). Both succeed; the
    reference pass is made by exactly one of them (its sidecar names the process that made
    it, and both runs record it); the database is intact and holds both runs."""
    import sqlite3
    import subprocess
    import sys

    store, env = tmp_path / "r.sqlite", {**os.environ, "QUANTSCOPE_CACHE": str(tmp_path / "c")}
    args = [
        "run",
        "--model",
        str(tiny_model_dir),
        "--text",
        str(tiny_text),
        "--configs",
        "fp32,bf16",
        "--tokens",
        "1500",
        "--context",
        "64",
        "--stride",
        "32",
        "--store",
        str(store),
        "--speed-reps",
        "1",
        "--max-new-tokens",
        "3",
    ]
    code = "import sys; from quantscope.cli import main; sys.argv[0] = 'quantscope'; main()"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, *args, "--json", str(tmp_path / f"{i}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    runs = [json.loads((tmp_path / f"{i}.json").read_text()) for i in (0, 1)]
    makers = {r["provenance"]["reference_made_by"] for r in runs}
    processes = {r["provenance"]["process"] for r in runs}
    assert len(makers) == 1 and makers <= processes and len(processes) == 2
    references = [p for p in (tmp_path / "c" / "reference").iterdir() if p.is_dir()]
    assert len(references) == 1 and not list((tmp_path / "c").rglob("*.tmp"))
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2
        assert db.execute("SELECT COUNT(*) FROM run_results").fetchone()[0] == 4


def test_a_damaged_artifact_is_made_again_never_read(tmp_path: Path) -> None:
    target = tmp_path / "folder"
    calls = []

    def make(tmp: Path) -> dict[str, int]:
        calls.append(1)
        tmp.mkdir()
        (tmp / "a.bin").write_bytes(bytes(range(256)) * 64)
        (tmp / "b.bin").write_bytes(b"x" * 1000)
        return {"n": len(calls)}

    assert made(target, make)["n"] == 1
    assert made(target, make)["n"] == 1  # intact: found
    data = bytearray((target / "a.bin").read_bytes())
    data[5000] ^= 0x01  # one bit flipped
    (target / "a.bin").write_bytes(bytes(data))
    assert read_made(target) is None and not target.exists()  # detected, removed
    assert made(target, make)["n"] == 2
    with (target / "b.bin").open("r+b") as handle:
        handle.truncate(10)  # a file cut short
    assert made(target, make)["n"] == 3 and (target / "b.bin").stat().st_size == 1000


def test_a_damaged_reference_chunk_is_recomputed_with_the_same_numbers(
    tiny_model_dir: Path, tiny_text: Path, tmp_path: Path
) -> None:
    from quantscope import runner
    from quantscope.config import DataSpec, RunSpec, model_spec, parse_config_list

    def spec(store: str) -> RunSpec:
        return RunSpec(
            model=model_spec(str(tiny_model_dir)),
            configs=parse_config_list("bf16"),
            data=DataSpec((str(tiny_text),), tokens=300, context=64, stride=32),
            prompts=("Hi",),
            max_new_tokens=2,
            speed_reps=1,
            ref_topk=16,
            store_path=store,
        )

    first = runner.run(spec(str(tmp_path / "a.sqlite")))
    (folder,) = [
        p for p in (Path(os.environ["QUANTSCOPE_CACHE"]) / "reference").iterdir() if p.is_dir()
    ]
    chunk = sorted(folder.glob("chunk-*.npz"))[0]
    chunk.write_bytes(chunk.read_bytes()[:-100])  # cut short
    second = runner.run(spec(str(tmp_path / "b.sqlite")))
    assert second.provenance["reference_made_by"] == second.provenance["process"]
    kl = [r.results[0].metrics["kl_mean"] for r in (first, second)]
    assert kl[0] == kl[1] > 0
