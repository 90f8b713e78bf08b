"""Run records: one JSON file per finished run, written atomically.  A record
that does not parse, lacks a required field or belongs to another grid point
is damaged: it is moved aside (with a warning) and the run is redone."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

from .files import move_aside


def software_versions(*packages: str) -> dict:
    """The versions a record was produced with: Python, torch, subind_fast
    and ``packages`` (e.g. "transformers", "timm")."""
    import importlib
    import platform

    import torch

    import subind_fast

    found = {"torch": torch.__version__, "subind_fast": subind_fast.__version__,
             "python": platform.python_version()}
    for name in packages:
        found[name] = importlib.import_module(name).__version__
    return found


def problem(record, required: Iterable[str], expected: dict) -> Optional[str]:
    """Why ``record`` is not a valid record of the run ``expected`` describes (None if it is)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in required if k not in record]
    if missing:
        return f"missing fields {missing}"
    wrong = [k for k, v in expected.items() if record.get(k) != v]
    if wrong:
        return f"fields {wrong} do not match its file name"
    return None


def read(path: Path, required: Iterable[str], expected: dict) -> Optional[dict]:
    """The valid record at ``path``; None if there is none (a damaged one is moved aside)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        move_aside(path, f"unreadable run record ({err})")
        return None
    why = problem(record, required, expected)
    if why is not None:
        move_aside(path, f"damaged run record ({why})")
        return None
    return record


def load_all(folder: Path, required: Iterable[str]) -> list[dict]:
    """Every record under ``folder`` for a report; a damaged one is an error
    naming its file (a report never silently drops or moves results)."""
    required = list(required)
    records = []
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: malformed run record ({err})") from err
        why = problem(record, required, {})
        if why is not None:
            raise ValueError(f"{path}: malformed run record ({why})")
        records.append(record)
    return records
