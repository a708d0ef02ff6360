"""--isolate: each config measured in a process of its own. A backend that segfaults, aborts,
runs out of memory or hangs fails its config with how it ended; the other configs are
measured, stored, and equal to the bit to what an in-process run measures."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantscope import isolation, runner
from quantscope.config import DataSpec, RunSpec, model_spec, parse_config_list
from quantscope.results import Status
from quantscope.store import Store

PLUGIN = Path(__file__).parent / "fixtures" / "crash_plugin" / "quantscope_crash.py"
TIMING = ("tps", "_s", "peak_")  # measured anew each time, never equal


@pytest.fixture(scope="module")
def crash_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The crash plug-in as an installed distribution (module and dist-info with its entry
    point) in a folder on this process's path and on the path of every child it starts."""
    site = tmp_path_factory.mktemp("crash-site")
    shutil.copy(PLUGIN, site)
    info = site / "quantscope_crash-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: quantscope-crash\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[quantscope.backends]\ncrash = quantscope_crash:Crash\n"
    )
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), before]))
    sys.path.insert(0, str(site))
    yield site
    sys.path.remove(str(site))
    sys.modules.pop("quantscope_crash", None)
    if before is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = before


def _spec(model: Path, text: Path, store: Path, configs: str, **more) -> RunSpec:
    return RunSpec(
        model=model_spec(str(model)),
        configs=parse_config_list(configs),
        data=DataSpec((str(text),), tokens=300, context=64, stride=32),
        max_new_tokens=3,
        speed_reps=1,
        ref_topk=16,
        store_path=str(store),
        **more,
    )


def _accuracy(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not any(t in k for t in TIMING)}


def test_a_crashing_config_costs_that_config_only(
    crash_plugin: Path, tiny_model_dir: Path, tiny_text: Path, tmp_path: Path
) -> None:
    configs = "fp32,crash[how=segv],bf16,crash[how=abort],rtn[bits=4,group=32]"
    spec = _spec(tiny_model_dir, tiny_text, tmp_path / "iso.sqlite", configs, isolate=True)
    report = runner.run(spec)
    assert [o.status for o in report.outcomes] == [
        Status.MEASURED,
        Status.FAILED,
        Status.MEASURED,
        Status.FAILED,
        Status.MEASURED,
    ]
    segv, abort = report.outcomes[1].reason, report.outcomes[3].reason
    assert "killed by SIGSEGV (signal 11)" in segv and "MB" in segv, segv
    assert "killed by SIGABRT (signal 6)" in abort, abort
    # the fault handler's first line and the innermost frame: where it crashed
    assert "its last lines: Fatal Python error: Segmentation fault" in segv, segv
    assert "quantscope_crash.py" in segv and "in quantize" in segv, segv
    # the measured configs: stored, and the same numbers as measured in this process
    alone = runner.run(
        _spec(tiny_model_dir, tiny_text, tmp_path / "in.sqlite", "fp32,bf16,rtn[bits=4,group=32]")
    )
    with Store(tmp_path / "iso.sqlite") as store:
        for plain in alone.results:
            isolated = store.get(plain.key)
            assert isolated is not None
            assert _accuracy(isolated.metrics) == _accuracy(plain.metrics)
            assert isolated.generations == plain.generations
            assert store.token_values(plain.key) is not None


def test_memory_cap_and_timeout_fail_the_config_with_the_reason(
    crash_plugin: Path, tiny_model_dir: Path, tiny_text: Path, tmp_path: Path
) -> None:
    store = tmp_path / "r.sqlite"
    capped = _spec(
        tiny_model_dir,
        tiny_text,
        store,
        "crash[how=memory],bf16",
        isolate=True,
        config_memory_mb=3000.0,  # torch and the tiny model need about 1 GB of address space
    )
    memory, bf16 = runner.run(capped).outcomes
    assert memory.status is Status.FAILED and "MemoryError" in memory.reason, memory.reason
    assert bf16.status is Status.MEASURED
    hung = _spec(
        tiny_model_dir, tiny_text, store, "crash[how=hang]", isolate=True, config_timeout=8
    )
    (hang,) = runner.run(hung).outcomes
    assert hang.status is Status.FAILED
    assert "ran past --config-timeout (8 s) and was stopped" in hang.reason, hang.reason


def test_how_a_child_ended_is_said_in_one_sentence(tmp_path: Path) -> None:
    ok = isolation.call("os.path:join", ("a", "b"))
    assert ok.ok and ok.value == os.path.join("a", "b") and ok.peak_mb >= 0
    failed = isolation.call("os:_exit", (3,))
    assert not failed.ok and failed.reason.startswith("its process exited with code 3")


def test_a_config_that_cannot_fit_is_skipped_before_it_loads(
    tiny_model_dir: Path, tiny_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quantscope import preflight

    monkeypatch.setattr(preflight, "available", lambda device: 0.5 * preflight.GB)
    spec = _spec(tiny_model_dir, tiny_text, tmp_path / "r.sqlite", "fp32,bf16")
    fp32, bf16 = runner.run(spec).outcomes
    assert fp32.status is bf16.status is Status.SKIPPED
    assert "it needs about 0.7 GB while measured" in bf16.reason, bf16.reason
    assert "more than the 0.5 GB of memory available" in bf16.reason
    assert "--no-memory-check" in bf16.reason
    unchecked = _spec(tiny_model_dir, tiny_text, tmp_path / "r.sqlite", "bf16", memory_check=False)
    assert runner.run(unchecked).outcomes[0].status is Status.MEASURED
