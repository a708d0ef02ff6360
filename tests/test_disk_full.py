"""A full disk: the cache or the results database on a small file system of its own (a tmpfs
mounted in a mount namespace of the test's own, ``unshare --mount``, as root). Either way one
sentence names the folder and about how much room the run needs, exit code 2, every result
finished before it stays stored and readable, and after room is made the run resumes and
gives the numbers a run with room gives."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import stored_accuracy, tiny_run


def _can_mount() -> str:
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux) to mount a small file system"
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
    )
    return "" if probe.returncode == 0 else "needs root to mount a tmpfs in its own namespace"


WHY = _can_mount()
pytestmark = pytest.mark.skipif(bool(WHY), reason=WHY or "runs")


def _script(tmp: Path, small: str, args: list[str], env: str) -> str:
    """Mount a tmpfs of ``small`` at tmp/full, run quantscope (exit code into tmp/first),
    grow it to 64 MB, run again (tmp/second), copy what the folder holds to tmp/kept."""
    quantscope = f"{sys.executable} -c 'from quantscope.cli import main; main()'"
    run = f"{env} {quantscope} {' '.join(args)}"
    full = tmp / "full"
    return (
        f"set -u; mount -t tmpfs -o size={small} tmpfs {full} && "
        f"{run} > {tmp}/first.out 2>&1; echo $? > {tmp}/first; "
        f"cp -r {full} {tmp}/after-first; "
        f"mount -o remount,size=64m {full} && {run} > {tmp}/second.out 2>&1; "
        f"echo $? > {tmp}/second; "
        f"cp -r {full} {tmp}/kept"
    )


def _run(tmp: Path, small: str, args: list[str], env: str) -> tuple[int, str, int]:
    (tmp / "full").mkdir()
    script = _script(tmp, small, args, env)
    subprocess.run(["unshare", "--mount", "sh", "-c", script], check=True, timeout=600)
    first = int((tmp / "first").read_text())
    second = int((tmp / "second").read_text())
    return first, " ".join((tmp / "first.out").read_text().split()), second


CONFIGS = "fp32,bf16,rtn[bits=8,group=32],rtn[bits=4,group=32],rtn[bits=3,group=32]"


def test_a_cache_without_room_is_refused_before_anything_is_written(
    tiny_model_dir: Path, tiny_text: Path, tmp_path: Path
) -> None:
    args = tiny_run(tiny_model_dir, tiny_text, CONFIGS)
    env = f"QUANTSCOPE_CACHE={tmp_path / 'full'} QUANTSCOPE_DEBUG_LOG={tmp_path / 'debug.log'}"
    first, said, second = _run(tmp_path, "256k", args, env)
    assert first == 2, said
    assert f"No room in '{tmp_path / 'full'}'" in said and "MB free" in said, said
    assert "needs about" in said and "run again: it resumes" in said, said
    assert "Traceback" not in said
    assert not list((tmp_path / "after-first").rglob("*.npz"))  # refused before writing
    assert second == 0, (tmp_path / "second.out").read_text()
    assert len(stored_accuracy(tmp_path / "kept" / "results.sqlite")) == 5


def test_a_full_store_mid_run_keeps_what_was_stored_and_resumes(
    tiny_model_dir: Path, tiny_text: Path, tmp_path: Path
) -> None:
    store = tmp_path / "full" / "r.sqlite"
    args = tiny_run(tiny_model_dir, tiny_text, CONFIGS, "--store", str(store))
    env = f"QUANTSCOPE_CACHE={tmp_path / 'cache'} QUANTSCOPE_DEBUG_LOG={tmp_path / 'debug.log'}"
    first, said, second = _run(tmp_path, "200k", args, env)  # measured: holds 1 to 4 of the 5
    assert first == 2, said
    assert f"No room in '{tmp_path / 'full'}'" in said and "Traceback" not in said, said
    stored = stored_accuracy(tmp_path / "after-first" / "r.sqlite")  # integrity_check ok
    assert 0 < len(stored) < 5  # some configs were stored before the disk filled
    assert second == 0, (tmp_path / "second.out").read_text()
    resumed = stored_accuracy(tmp_path / "kept" / "r.sqlite")
    assert len(resumed) == 5
    assert all(resumed[c] == stored[c] for c in stored)  # kept, and reused as they were
    with_room = tmp_path / "room.sqlite"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from quantscope.cli import main; main()",
            *args[:-1],
            str(with_room),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "QUANTSCOPE_CACHE": str(tmp_path / "cache")},
    )
    assert stored_accuracy(with_room) == resumed  # the same numbers as a run that had room
