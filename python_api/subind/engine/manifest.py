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

import json
from pathlib import Path

from .files import create_exclusively, locked

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _describe(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def read(out: Path) -> dict:
    """The manifest of ``out`` (FileNotFoundError / ValueError naming the file)."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{out}: no {MANIFEST} (not a results directory of this tool)")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT_VERSION or not isinstance(manifest.get("config"), dict):
            raise ValueError("unknown format")
        return manifest
    except (json.JSONDecodeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path}: damaged or unknown manifest ({err})") from err


def claim(out: Path, experiment: str, identity: dict) -> None:
    """Record ``experiment`` and its ``identity`` config in ``out``, or check
    that the directory already holds exactly this configuration."""
    out = Path(out)
    text = json.dumps({"format": FORMAT_VERSION, "experiment": experiment, "config": identity},
                      indent=2, default=str, sort_keys=True)
    out.mkdir(parents=True, exist_ok=True)
    # Under the manifest's lock, so two sweeps starting on one empty directory
    # cannot see each other's lock or temp file as "foreign files".
    with locked(out / MANIFEST):
        if not (out / MANIFEST).exists() and any(
                not p.name.startswith(f".{MANIFEST}.") for p in out.iterdir()):
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
                         f"({len(differing)} field(s) differ: {details}); use another --out "
                         "(only the grid — conditions, layers, sample sizes, seeds — may change)")
