"""The results database: SQLite, one row per measured config, committed as it finishes.

A result's key is a hash of model, config, data and settings fingerprints; a rerun finds the
key and reuses the row. Schema changes bump :data:`SCHEMA_VERSION`.

>>> import tempfile, os
>>> with tempfile.TemporaryDirectory() as d, Store(os.path.join(d, "r.sqlite")) as store:
...     store.get("missing") is None
True
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from quantscope import chaos
from quantscope.cache import cache_dir, no_room, room_error
from quantscope.errors import UserError
from quantscope.provenance import now
from quantscope.results import Outcome, Result, RunReport, Status

SCHEMA_VERSION = 4  # 4 renamed studies → analyses; 3 added per-token values; all upgraded
_RENAMED = {"studies": "analyses", "study_rows": "sensitivity_rows"}  # in schema 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, created TEXT NOT NULL, model TEXT NOT NULL, settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY, config TEXT NOT NULL, created TEXT NOT NULL,
    model_fp TEXT NOT NULL, data_fp TEXT NOT NULL, settings_fp TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_results (
    run_id TEXT NOT NULL REFERENCES runs(id), key TEXT NOT NULL REFERENCES results(key),
    position INTEGER NOT NULL, status TEXT NOT NULL, PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS token_values (key TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS analyses (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL, created TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sensitivity_rows (
    key TEXT NOT NULL, unit TEXT NOT NULL, mode TEXT NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (key, unit, mode)
);
"""


def default_store() -> Path:
    """The default results database: ``$QUANTSCOPE_CACHE/results.sqlite``."""
    return cache_dir() / "results.sqlite"


def open_existing(path: str | os.PathLike[str] | None) -> Store:
    """The results database at ``path`` (the default one when None), for reading what was
    stored: the one opener of the commands and functions that read results; one sentence
    when there is none."""
    found = Path(path).expanduser() if path else default_store()
    if not found.is_file():
        raise UserError(
            f"No results database at '{found}'; measure first ('quantscope run') or point to "
            "one with --store (store= from Python)."
        )
    return Store(found)


BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's write to finish


class Store:
    """A results database at ``path`` (created with its folder when missing), safe for many
    processes at once: WAL journal (readers never block the writer) and a busy timeout.
    Use it as a context manager (``with Store(path) as store:``) so it is always closed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
            found = self._set_up(time.monotonic() + BUSY_TIMEOUT_S)
        except (OSError, sqlite3.DatabaseError) as err:
            if no_room(err):  # its tables, its write-ahead log and a first row: about 1 MB
                raise room_error(self.path.parent, 1 << 20, "the results database") from None
            raise UserError(
                f"Cannot use '{self.path}' as a results database ({err}): if it is damaged, "
                "move it aside and run again (a new one is made), or pass another --store."
            ) from None
        if found is None or found[0] in ("1", "2", "3"):  # older: tables missing or renamed
            with self.db:
                self.db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                )
        elif not found[0].isdigit() or int(found[0]) > SCHEMA_VERSION:
            raise UserError(
                f"'{self.path}' was written by a newer quantscope (results schema {found[0]}; "
                f"this one reads up to {SCHEMA_VERSION}): upgrade quantscope, or pass another "
                "--store."
            )

    def _set_up(self, deadline: float) -> tuple[str] | None:
        """WAL mode, the tables, and the schema version found. Switching a new file to WAL
        takes an exclusive lock for which SQLite calls no busy handler, so two processes that
        open a new database at the same moment can see "database is locked": the setup is
        tried again until the busy timeout has passed (measured: 11 of 24 such opens failed
        without it)."""
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                with self.db:
                    self._rename_tables()
                self.db.executescript(_SCHEMA)
                found = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                return None if found is None else (str(found[0]),)
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _rename_tables(self) -> None:
        """Schema 4's names for the tables of schema 2 and 3 (the rows are kept)."""
        tables = {
            r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        for old, new in _RENAMED.items():
            if old in tables and new not in tables:
                self.db.execute(f"ALTER TABLE {old} RENAME TO {new}")

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new_run(self, model: str, settings: dict[str, Any]) -> str:
        run_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self.db:
            self.db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?)",
                (run_id, now(), model, json.dumps(settings, sort_keys=True)),
            )
        return run_id

    def get(self, key: str) -> Result | None:
        row = self.db.execute("SELECT body FROM results WHERE key=?", (key,)).fetchone()
        return Result.from_json(row[0]) if row else None

    def put(self, result: Result, tokens: bytes | None = None) -> None:
        """Insert or replace a result and its per-token values (``TokenValues.to_bytes()``)
        in one transaction, committed before this returns (a full disk: ENOSPC, naming the
        database; the rows before it are kept)."""
        try:
            self._put(result, tokens)
        except sqlite3.OperationalError as err:
            if "full" in str(err):
                raise OSError(errno.ENOSPC, str(err), str(self.path)) from None
            raise

    def _put(self, result: Result, tokens: bytes | None) -> None:
        with self.db:
            if tokens is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO token_values VALUES (?, ?)", (result.key, tokens)
                )
            chaos.point("store-row")  # inside the transaction: a kill here rolls it back
            self.db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    result.key,
                    result.config,
                    result.created or now(),
                    result.model_fingerprint,
                    result.data_fingerprint,
                    result.settings_fingerprint,
                    result.to_json(),
                ),
            )

    def token_values(self, key: str) -> bytes | None:
        """The per-token values stored with result ``key`` (None: measured before they
        were kept)."""
        row = self.db.execute("SELECT body FROM token_values WHERE key=?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def link(self, run_id: str, key: str, position: int, status: Status) -> None:
        """Record that ``run_id`` used result ``key`` (measured or reused)."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO run_results VALUES (?, ?, ?, ?)",
                (run_id, key, position, Status(status).value),
            )

    def run_results(self, run_id: str) -> list[tuple[Status, Result]]:
        """The (status, result) pairs of a run, in config order."""
        rows = self.db.execute(
            "SELECT rr.status, r.body FROM run_results rr JOIN results r ON r.key = rr.key "
            "WHERE rr.run_id=? ORDER BY rr.position",
            (run_id,),
        ).fetchall()
        return [(Status(status), Result.from_json(body)) for status, body in rows]

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first: id, created, model, number of configs, settings."""
        rows = self.db.execute(
            "SELECT r.id, r.created, r.model, r.settings, COUNT(rr.key) FROM runs r "
            "LEFT JOIN run_results rr ON rr.run_id = r.id GROUP BY r.id "
            "ORDER BY r.created DESC, r.id DESC"
        ).fetchall()
        return [
            {"run": i, "created": c, "model": m, "configs": n, "settings": json.loads(s)}
            for i, c, m, s, n in rows
        ]

    def report(self, run_id: str) -> RunReport:
        """A stored run as a :class:`RunReport` (``latest`` names the newest run)."""
        runs = self.runs()
        if run_id == "latest" and runs:
            run_id = runs[0]["run"]
        found = [r for r in runs if r["run"] == run_id]
        if not found:
            known = ", ".join(r["run"] for r in runs[:5]) or "none yet"
            raise UserError(
                f"No run '{run_id}' in {self.path}; 'quantscope runs' lists them ({known})."
            )
        outcomes = [
            Outcome(result.config, status, "", result)
            for status, result in self.run_results(run_id)
        ]
        first = outcomes[0].result.meta if outcomes and outcomes[0].result else {}
        keys = ("model", "model_origin", "model_folder", "text", "hardware")
        provenance = {k: first[k] for k in keys if k in first}
        return RunReport(run_id, outcomes, found[0]["settings"], provenance)

    def put_analysis(self, key: str, kind: str, body: dict[str, Any]) -> None:
        """Insert or replace an analysis built on runs (``kind``: a sensitivity study, a search,
        a recovery or a sweep); committed at once."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO analyses VALUES (?, ?, ?, ?)",
                (key, kind, now(), json.dumps(body, default=str)),
            )

    def get_analysis(self, key: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT body FROM analyses WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def analyses(self, kind: str) -> list[tuple[str, str, dict[str, Any]]]:
        """(key, created, body) of every analysis of ``kind``, newest first."""
        rows = self.db.execute(
            "SELECT key, created, body FROM analyses WHERE kind=? "
            "ORDER BY created DESC, rowid DESC",
            (kind,),
        ).fetchall()
        return [(k, c, json.loads(b)) for k, c, b in rows]

    def sweep_runs(self, key: str) -> tuple[str, list[RunReport]] | None:
        """A stored sweep (``latest``: the newest) as its name and runs, or None."""
        found = self.analyses("sweep")
        match = found[:1] if key == "latest" else [s for s in found if s[0] == key]
        if not match:
            return None
        body = match[0][2]
        return str(body["name"]), [self.report(run) for run in body["runs"]]

    def put_sensitivity_row(self, key: str, unit: str, mode: str, body: dict[str, Any]) -> None:
        """One finished measurement of a sensitivity study, committed before the next starts."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO sensitivity_rows VALUES (?, ?, ?, ?)",
                (key, unit, mode, json.dumps(body, default=str)),
            )

    def sensitivity_rows(self, key: str) -> dict[tuple[str, str], dict[str, Any]]:
        """A sensitivity study's measurements so far, by (unit, mode)."""
        found = self.db.execute(
            "SELECT unit, mode, body FROM sensitivity_rows WHERE key=?", (key,)
        ).fetchall()
        return {(unit, mode): json.loads(body) for unit, mode, body in found}

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def close(self) -> None:
        self.db.close()
