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


def test_the_new_runner_reuses_every_row_of_the_previous_release(
    old_store: Path, tiny_model_dir: Path, tiny_text: Path
) -> None:
    """The same run as the fixture's (same tiny model, text and settings): nothing measured
    again. The text's path is one of the settings, so the text is written where the fixture's
    was. Results are keyed by library versions too, so this holds while they are the ones the
    fixture was written with; after an upgrade a rerun rightly measures again."""
    from quantscope import runner
    from quantscope.config import DataSpec, RunSpec, model_spec, parse_config_list
    from quantscope.provenance import versions

    with Store(old_store) as store:
        (run,) = store.runs()
        old = [r for _, r in store.run_results(run["run"])]
    if run["settings"]["versions"] != versions():
        pytest.skip(f"library versions changed since the fixture: {run['settings']['versions']}")
    text = Path(run["settings"]["sources"][0])
    text.parent.mkdir(parents=True, exist_ok=True)
    text.write_text(tiny_text.read_text(encoding="utf-8"), encoding="utf-8")
    spec = RunSpec(
        model=model_spec(str(tiny_model_dir)),
        configs=parse_config_list([r.config for r in old]),
        data=DataSpec((str(text),), tokens=200, context=64, stride=32),
        prompts=("Hello",),
        max_new_tokens=3,
        speed_reps=1,
        ref_topk=16,
        store_path=str(old_store),
    )
    report = runner.run(spec)
    assert [o.status.value for o in report.outcomes] == ["reused"] * len(old)
    assert [o.result for o in report.outcomes] == old
