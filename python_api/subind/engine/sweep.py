"""A resumable, shardable sweep over a grid of runs, and cached stages.

* The grid is a sorted list of run keys (tuples named by ``key_fields``);
  ``shard=(i, k)`` takes every k-th key from i, so k machines or processes
  share one grid deterministically.
* A run is finished when its record (JSON, written atomically) is valid;
  damaged records are moved aside and redone (records.py).
* A run is claimed with a non-blocking lock; a run another process holds is
  left to it, so concurrent shards never write the same file.  A shard runs
  its own keys first, then any other shard's key nobody has claimed yet, so
  shards of unequal speed end together.
* :func:`cached_stage` builds an artifact shared by many runs (a base model,
  a subnetwork) once: under a lock, reused when complete, rebuilt when damaged.
  While another process builds a stage, a shard runs what needs no such stage
  first (scratch runs while the subnetwork is being discovered) and waits only
  when nothing else is left.
"""
from __future__ import annotations

import contextvars
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

from . import records
from .files import atomic_write_json, locked, move_aside

T = TypeVar("T")


class StageBusy(Exception):
    """Another process is building a stage this run needs."""


# Set while the sweep has other runs to turn to: a busy stage then raises
# StageBusy instead of waiting.
_TURN_AWAY_FROM_BUSY_STAGES = contextvars.ContextVar("turn_away_from_busy_stages",
                                                     default=False)


def parse_shard(spec: Optional[str]) -> tuple[int, int]:
    """'i/k' → (i, k) with 0 ≤ i < k."""
    if spec is None:
        return 0, 1
    try:
        i, k = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/k (e.g. 0/4), got {spec!r}") from None
    if k < 1 or not 0 <= i < k:
        raise ValueError(f"--shard {spec!r}: need 0 <= i < k")
    return i, k


@dataclass
class SweepResult:
    """What one call of :meth:`Sweep.run` did."""

    present: int = 0                                  # valid records found, not redone
    written: list = field(default_factory=list)       # records written now
    elsewhere: list = field(default_factory=list)     # runs another process holds

    def __len__(self) -> int:
        return len(self.written)

    def __iter__(self):
        return iter(self.written)

    def summary(self) -> str:
        return (f"{len(self.written)} runs done now, {self.present} already present"
                + (f", {len(self.elsewhere)} running in another process" if self.elsewhere else ""))


class Sweep:
    def __init__(self, keys: Sequence[tuple], key_fields: Sequence[str],
                 record_fields: Sequence[str], path_of: Callable[[tuple], Path]):
        self.keys = sorted(keys)
        if len(set(self.keys)) != len(self.keys):
            raise ValueError("the grid lists a run twice")
        self.key_fields, self.record_fields = tuple(key_fields), tuple(record_fields)
        self.path_of = path_of

    def expected(self, key: tuple) -> dict:
        return dict(zip(self.key_fields, key))

    def finished(self, key: tuple) -> bool:
        """Whether a valid record exists (a damaged one is moved aside)."""
        return records.read(self.path_of(key), self.record_fields, self.expected(key)) is not None

    def run(self, execute: Callable[[tuple], dict], shard: tuple[int, int] = (0, 1),
            progress: bool = False) -> SweepResult:
        """``execute(key)`` → record for every unfinished run of this shard,
        then for every other shard's run that no process has claimed."""
        from tqdm.auto import tqdm

        i, k = shard
        mine = self.keys[i::k]
        todo = [key for key in mine if not self.finished(key)]
        result = SweepResult(present=len(mine) - len(todo))
        others = set(self.keys) - set(mine)
        queue = deque(todo + [key for key in self.keys if key in others])
        own, turned_away = set(todo), set()
        bar = tqdm(total=len(todo), desc="runs", disable=None if progress else True)
        while queue:
            key = queue.popleft()
            path = self.path_of(key)
            with locked(path, wait=False) as claimed:
                if not claimed:
                    if key in own:
                        result.elsewhere.append(path)
                    continue
                if self.finished(key):  # another process finished it meanwhile
                    result.present += key in own
                    continue
                # Turn away from a busy stage while some other run has not been tried.
                others_untried = any(other not in turned_away for other in queue)
                token = _TURN_AWAY_FROM_BUSY_STAGES.set(others_untried)
                try:
                    record = {**self.expected(key), **execute(key)}
                except StageBusy:
                    turned_away.add(key)
                    queue.append(key)
                    continue
                finally:
                    _TURN_AWAY_FROM_BUSY_STAGES.reset(token)
                atomic_write_json(path, record)
                result.written.append(path)
                turned_away.clear()
                bar.update(key in own)
        bar.close()
        return result


def cached_stage(artifact: Path, load: Callable[[Path], T], build: Callable[[Path], tuple[T, dict]]
                 ) -> T:
    """The artifact at ``artifact``: loaded when complete (its ``.json``
    record is written last), else built by ``build(artifact)`` — which writes
    the artifact and returns (object, record) — by one process at a time.  An
    artifact that fails to load is moved aside and rebuilt."""
    meta = artifact.with_suffix(".json")
    complete = artifact.exists() and meta.exists()
    with locked(artifact, wait=complete or not _TURN_AWAY_FROM_BUSY_STAGES.get()) as claimed:
        if not claimed:
            raise StageBusy(artifact)
        if artifact.exists() and meta.exists():
            try:
                return load(artifact)
            except Exception as err:  # loaders raise many types for damaged files
                move_aside(artifact, f"unreadable ({type(err).__name__}: {err})")
        token = _TURN_AWAY_FROM_BUSY_STAGES.set(False)  # a stage built here finishes here
        try:
            value, record = build(artifact)
        finally:
            _TURN_AWAY_FROM_BUSY_STAGES.reset(token)
        atomic_write_json(meta, record)
        return value
