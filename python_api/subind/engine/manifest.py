"""The results directory's manifest: which experiment it holds and the
configuration every result in it was produced with.

A sweep writes ``manifest.json`` when it first uses a directory and checks it
on every later run: a different experiment or any differing configuration
field is refused with an error naming the fields, so one directory never
mixes two configurations.  The grid axes (which conditions, layer counts,
sample sizes and seeds to run) are not part of the identity — every record is
keyed by its grid point, so a later run may add seeds or sample sizes to the
same experiment — and neither are execution settings (the device).
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Optional

from .files import content_hash, create_exclusively, locked

MANIFEST = "manifest.json"
#: the lock a command holds on its directory while it runs (``exclusive``)
RUN_LOCK = "run"
FORMAT_VERSION = 1


def _describe(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def read(out: Path) -> dict:
    """The manifest of ``out`` (FileNotFoundError / ValueError naming the file)."""
    path = Path(out) / MANIFEST
    if not Path(out).is_dir():
        raise FileNotFoundError(f"results directory {out} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{out}: no {MANIFEST} (not a results directory of this tool)")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT_VERSION or not isinstance(manifest.get("config"), dict):
            raise ValueError("unknown format")
        return manifest
    except (json.JSONDecodeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: damaged or unknown manifest ({err})") from err


SWEEP_HINT = ("use another --out (only the grid — conditions, layers, sample sizes, seeds — "
              "may change)")


def check_out(out: Path) -> None:
    """``out`` can be a results directory: absent, or a directory (a file of
    that name is an error).  Call before any work, so a mistake costs nothing."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory; name a new directory")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is a file, not a directory")


def claim(out: Path, experiment: str, identity: dict, hint: str = SWEEP_HINT) -> None:
    """Record ``experiment`` and its ``identity`` config in ``out``, or check
    that the directory already holds exactly this configuration (``hint``
    says what to do when it does not)."""
    out = Path(out)
    check_out(out)
    text = json.dumps({"format": FORMAT_VERSION, "experiment": experiment, "config": identity},
                      indent=2, default=str, sort_keys=True, allow_nan=False)
    out.mkdir(parents=True, exist_ok=True)
    # Under the manifest's lock, so two sweeps starting on one empty directory
    # cannot see each other's lock or temp file as "foreign files".
    with locked(out / MANIFEST):
        if not (out / MANIFEST).exists() and any(
                not p.name.startswith(f".{MANIFEST}.") and p.name != f".{RUN_LOCK}.lock"
                for p in out.iterdir()):
            raise ValueError(f"{out} already holds files but no {MANIFEST} (written by another "
                             "tool or an older version); use a new --out")
        if create_exclusively(out / MANIFEST, text):
            return
    manifest = read(out)
    if manifest.get("experiment") != experiment:
        raise ValueError(f"{out} holds the {manifest.get('experiment')!r} experiment, not "
                         f"{experiment!r}; use another --out")
    stored = json.loads(json.dumps(manifest["config"]))
    wanted = json.loads(json.dumps(identity, default=str))
    differing = sorted(set(stored) | set(wanted))
    differing = [k for k in differing if stored.get(k) != wanted.get(k)]
    if differing:
        details = "; ".join(f"{k}: directory {_describe(stored.get(k))}, now "
                            f"{_describe(wanted.get(k))}" for k in differing)
        raise ValueError(f"{out} holds results of a different configuration "
                         f"({len(differing)} field(s) differ: {details}); {hint}")


def content_of(skip: Optional[Path] = None, **inputs) -> dict:
    """{name: SHA-256} for each named input that is a file, or a directory
    (``hf:DIR``'s weights and config, an image folder: one hash over every
    file's relative path and bytes, leaving out ``skip``, a results directory
    inside it); None, 'random' and package specs are left out.  Recorded in a
    manifest's identity, so other contents at the same path are another
    configuration."""
    out = {}
    for name, path in inputs.items():
        if path is None:
            continue
        path = Path(path)
        if path.is_file():
            out[name] = content_hash(path)
        elif path.is_dir():
            out[name] = _directory_hash(path, skip)
    return out


def _directory_hash(directory: Path, skip: Optional[Path]) -> str:
    import hashlib

    skipped = skip.resolve() if skip is not None else None
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        if skipped is not None and path.resolve().is_relative_to(skipped):
            continue
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(content_hash(path).encode() + b"\0")
    return "sha256:" + digest.hexdigest()


@contextlib.contextmanager
def exclusive(out: Path, command: str) -> Iterator[None]:
    """Hold ``out`` for this process while the body runs — a lock the kernel
    releases when the process dies, so a second process started on the same
    directory is refused at once instead of computing beside it and
    interleaving its writes.  A directory made for the lock and left empty
    (the body failed before writing) is removed again."""
    out = Path(out)
    check_out(out)
    created = not out.exists()
    try:
        with locked(out / RUN_LOCK, wait=False) as mine:
            if not mine:
                raise ValueError(f"{out} is in use by another subind {command} process; wait "
                                 "for it to end (or stop it), then rerun this command to continue")
            yield
    finally:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


@contextlib.contextmanager
def held(out: Path, command: str, identity: dict, hint: str) -> Iterator[None]:
    """What a single-run command (``subind <command>``) does once its checks
    pass: hold ``out`` (``exclusive``) and claim it for ``identity`` (see
    ``claim``; the manifest names the command as its experiment) while the
    body runs."""
    with exclusive(out, command):
        claim(out, command, identity, hint=hint)
        yield
