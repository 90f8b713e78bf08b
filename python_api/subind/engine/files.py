"""Files a sweep writes: atomically (a temp file in the same folder, then a
rename, so a reader or a resumed sweep never sees half a file), moved aside
when damaged (never silently trusted or deleted), and guarded by advisory
locks so concurrent shards never write the same file.

Locks are ``fcntl.flock`` on a hidden ``.<name>.lock`` file beside the
target: the kernel releases them when the holding process dies, so a killed
shard leaves no stale lock.  The files stay (removing a lock file another
process may be opening would break the lock); they are empty.  On NFS flock
needs the lock daemon, as any flock use does.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)``, then rename the result onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, record: dict) -> Path:
    return atomic_write_text(path, json.dumps(record, indent=2, default=str))


def create_exclusively(path: Path, text: str) -> bool:
    """Write ``path`` only if it does not exist (atomically, race-free);
    return whether this call created it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
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
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
