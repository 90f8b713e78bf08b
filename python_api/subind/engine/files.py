"""Files a sweep writes: atomically (a temp file in the same folder, then a
rename, so a reader or a resumed sweep never sees half a file), moved aside
when damaged (never silently trusted or deleted), and guarded by advisory
locks so concurrent shards never write the same file.

Locks are ``fcntl.flock`` on a hidden ``.<name>.lock`` file beside the
target: the kernel releases them when the holding process dies, so a killed
shard leaves no stale lock.  The holder removes the file before it lets go;
a process that locked a file meanwhile removed checks that the path still
names the file it holds, and otherwise tries again.  On NFS flock needs the
lock daemon, as any flock use does.

``atomic_write`` is the kernel library's (subind_fast.atomic): files written
here get the permissions of any file the process creates (0666 less the
umask), not the 0600 of a temporary file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

from subind_fast.atomic import FILE_MODE, atomic_write


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes (what a results manifest records of an input
    file, so that another file at the same path is another configuration)."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    except OSError as err:
        raise FileNotFoundError(f"cannot read {path}: {err.strerror}") from None
    return "sha256:" + digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def _finite_or_null(value):
    """JSON has no NaN or infinity: a number that is not finite is written as
    null (Python's json would write a bare NaN that strict readers reject)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def atomic_write_json(path: Path, record: dict) -> Path:
    return atomic_write_text(path, json.dumps(_finite_or_null(record), indent=2, default=str,
                                              allow_nan=False))


def create_exclusively(path: Path, text: str) -> bool:
    """Write ``path`` only if it does not exist (atomically, race-free);
    return whether this call created it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, FILE_MODE)
        os.link(tmp, path)  # fails if path exists: the first writer wins
        return True
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)


def move_aside(path: Path, reason: str) -> Path:
    """Rename a damaged file to ``<name>.corrupt-<time>`` and warn; the
    caller then redoes what produced it."""
    path = Path(path)
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, target)
    warnings.warn(f"{path}: {reason}; moved aside to {target.name} and redoing it", stacklevel=2)
    return target


@contextlib.contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the lock for ``path`` (``.<name>.lock`` beside it).  With
    ``wait=False`` it yields False at once when another process holds it."""
    lock_path = Path(path).with_name(f".{Path(path).name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with open(lock_path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                if not _still_names(lock_path, handle):
                    continue  # its holder removed it while we waited: lock the new one
                try:
                    yield True
                finally:
                    lock_path.unlink(missing_ok=True)  # before letting go, so no one reuses it
                return
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _still_names(path: Path, handle) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return False
