"""The results database: results stored by the release before the per-family config redesign
are found by the keys the new code computes (``fixtures/store-0.1.sqlite``, written by that
release on the tiny test model: 11 configs of 6 backends), and the store is safe to share."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from quantscope.config import parse_config
from quantscope.runner import result_key
from quantscope.store import Store

FIXTURE = Path(__file__).parent / "fixtures" / "store-0.1.sqlite"


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    path = tmp_path / "old.sqlite"
    shutil.copy(FIXTURE, path)
    return path


def test_results_of_the_previous_release_are_found_by_their_keys(old_store: Path) -> None:
    with Store(old_store) as store:
        (run,) = store.runs()
        pairs = store.run_results(run["run"])
        assert len(pairs) == 11
        for _status, old in pairs:
            config = parse_config(old.meta["config"])  # the canonical name it was stored under
            assert config.name == old.meta["config"] == old.config
            key = result_key(
                old.model_fingerprint, config, old.data_fingerprint, old.settings_fingerprint
            )
            assert key == old.key, old.config
            assert store.get(key) == old
        report = store.report("latest")
        assert [o.status.value for o in report.outcomes] == ["measured"] * 11


def test_the_store_runs_in_wal_mode_and_upgrades_in_place(old_store: Path) -> None:
    with Store(old_store) as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.count() == 11
    with sqlite3.connect(old_store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_the_new_code_keys_every_row_of_the_previous_release_as_stored(
    old_store: Path, tiny_model_dir: Path, tiny_text: Path
) -> None:
    """The same run as the fixture's (same tiny model, text and settings), prepared by today's
    code: its settings equal the stored ones but for the two that belong to the machine that
    wrote the fixture (library versions, the text's path), its windows fingerprint is the
    stored one, and with those two settings taken from the fixture every key is the stored
    key. Version-independent by construction, so it runs on every install (the model files'
    own fingerprint changes with transformers, which writes its version into config.json:
    the stored one is used)."""
    from quantscope.config import DataSpec, RunSpec, model_spec, parse_config_list
    from quantscope.context import prepare
    from quantscope.events import LogEvents
    from quantscope.provenance import digest

    with Store(old_store) as store:
        (run,) = store.runs()
        old = [r for _, r in store.run_results(run["run"])]
    spec = RunSpec(
        model=model_spec(str(tiny_model_dir)),
        configs=parse_config_list([r.config for r in old]),
        data=DataSpec((str(tiny_text),), tokens=200, context=64, stride=32),
        prompts=("Hello",),
        max_new_tokens=3,
        speed_reps=1,
        ref_topk=16,
    )
    ctx = prepare(spec, LogEvents())
    theirs = {"versions": run["settings"]["versions"], "sources": run["settings"]["sources"]}
    settings = {**ctx.settings, **theirs}
    assert settings == run["settings"]
    for stored, config in zip(old, spec.configs, strict=True):
        assert ctx.windows.fingerprint == stored.data_fingerprint
        assert digest(settings) == stored.settings_fingerprint
        key = result_key(
            stored.model_fingerprint, config, ctx.windows.fingerprint, digest(settings)
        )
        assert key == stored.key, stored.config


RACE = """
import sys, time
from quantscope.store import Store
path, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    pass
with Store(path) as store:
    store.new_run("m", {})
"""


def test_two_processes_opening_a_new_store_at_once_both_get_it(tmp_path: Path) -> None:
    """Switching a new file to WAL takes a lock SQLite waits for in no busy handler: without
    the store's retry, about half of such simultaneous opens failed ("database is locked")."""
    import subprocess
    import sys
    import time

    for round_ in range(4):
        path, start = tmp_path / f"r{round_}.sqlite", time.time() + 3.0
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", RACE, str(path), str(start)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], errors
        with Store(path) as store:
            assert len(store.runs()) == 2
