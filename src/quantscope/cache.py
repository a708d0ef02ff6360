"""The cache folder and the one way a cached artifact is made: once, atomically, under a lock.

Many processes may share one cache folder (two runs at once, sweep workers). An artifact (a
reference pass, a quantized GPTQ folder, a GGUF file, a converted model) is complete when its
sidecar ``NAME.made.json`` exists; the sidecar is written last, so a reader never sees half an
artifact. A process that needs a missing artifact takes ``NAME.lock`` (an OS file lock, which
the kernel releases when its holder dies, even by kill -9: no stale lock can block the next
run), looks again (another process may have made it meanwhile), makes it under a temporary
name unique to this process, and renames it into place. The sidecar names the process that
made it (``made_by``), so a caller can tell whether it made an artifact or found it, and holds
the SHA-256 of every file, checked before an artifact is used.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as d:
...     target = Path(d) / "hello.txt"
...     meta = made(target, lambda tmp: tmp.write_text("hi") and {"seconds": 0.1})
...     again = made(target, lambda tmp: 1 / 0)  # found: not made twice
...     target.read_text(), meta == again, meta["made_by"] == maker()
('hi', True, True)
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quantscope.errors import UserError

log = logging.getLogger(__name__)
WAIT_NOTE_S = 30.0  # how often a waiting process says what it is waiting for


def cache_dir() -> Path:
    """Where quantscope keeps converted models, reference passes, artifacts and results.

    ``$QUANTSCOPE_CACHE`` if set, else ``~/.cache/quantscope``.
    """
    root = os.environ.get("QUANTSCOPE_CACHE") or Path.home() / ".cache" / "quantscope"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def sidecar(target: Path) -> Path:
    """The file whose presence says ``target`` is complete (it holds what making it took)."""
    return target.with_name(target.name + ".made.json")


def read_made(target: Path) -> dict[str, Any] | None:
    """What making ``target`` took, or None when it is not (completely) there. A target whose
    files no longer match the checksums recorded when it was made (a bit flipped, a file cut
    short, a disk that filled up) is removed, so it is made again, never read as data."""
    try:
        meta = json.loads(sidecar(target).read_text())
    except (OSError, ValueError):
        return None
    if not target.exists():
        return None
    stamp = _stamp(target)
    if "files" in meta and stamp not in _verified:
        if checksums(target) != meta["files"]:
            log.warning("%s does not match its checksums; it will be made again", target)
            _remove(sidecar(target))
            _remove(target)
            return None
        _verified.add(stamp)  # artifacts never change once made: once per process is enough
    return dict(meta)


_verified: set[tuple[object, ...]] = set()


def _stamp(target: Path) -> tuple[object, ...]:
    """Path, size and modification time of every file of ``target``: what verified means."""
    paths = [target] if target.is_file() else sorted(target.rglob("*"))
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def checksums(target: Path) -> dict[str, str]:
    """SHA-256 of a file, or of every file under a folder, by path relative to it."""
    paths = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    found = {}
    for path in paths:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        found[str(path.relative_to(target)) if path != target else ""] = digest.hexdigest()
    return found


def made(target: Path, make: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """``target`` made once by ``make(tmp)`` (a file or a folder at ``tmp``, returning what
    to record, e.g. the seconds it took), or found; what making it recorded."""
    found = read_made(target)
    if found is not None:
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        found = read_made(target)  # another process may have made it while we waited
        if found is not None:
            return found
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed maker
            _remove(stale)  # (we hold the lock: no other process is making it now)
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            meta = {**make(tmp), "made_by": maker(), "files": checksums(tmp)}
            _remove(target)  # an incomplete leftover of a process that died
            os.replace(tmp, target)
        finally:
            _remove(tmp)
        write_json(sidecar(target), meta)
        return meta


def maker() -> str:
    """This process, as the ``made_by`` of what it makes: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def write_json(path: Path, body: Any) -> None:
    """Write JSON to ``path`` atomically (a unique temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(body, default=str))
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


class _locked:
    """Hold ``NAME.lock`` (an OS lock: released by the kernel when the holder dies), saying
    every :data:`WAIT_NOTE_S` seconds that this process waits for another."""

    def __init__(self, target: Path) -> None:
        from filelock import FileLock

        self.target = target
        self.lock = FileLock(str(target.with_name(target.name + ".lock")))

    def __enter__(self) -> None:
        from filelock import Timeout

        while True:
            try:
                self.lock.acquire(timeout=WAIT_NOTE_S)
                return
            except Timeout:
                log.warning("waiting for another process to finish making %s", self.target)

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


MB = 1 << 20


def no_room(err: BaseException) -> bool:
    """Whether ``err`` says a file system is full (ENOSPC; SQLite says it in words)."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return "database or disk is full" in str(err)


def room_error(folder: Path, need_bytes: float, what: str) -> UserError:
    """The one sentence for a folder without the room ``what`` needs (about ``need_bytes``)."""
    try:
        free = f"{shutil.disk_usage(folder).free / MB:,.1f} MB free"
    except OSError:
        free = "its free space unknown"
    return UserError(
        f"No room in '{folder}' ({free}): {what} needs about {need_bytes / MB:,.1f} MB; "
        "every result finished so far is stored — free some room, or point QUANTSCOPE_CACHE "
        "(or --store) to a larger disk, and run again: it resumes."
    )


def check_room(folder: Path, need_bytes: float, what: str) -> None:
    """Refuse, before anything is written, when ``folder``'s file system has less room than
    ``need_bytes``."""
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free < need_bytes:
        raise room_error(folder, need_bytes, what)
