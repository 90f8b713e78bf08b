"""docs/architecture.md stays true: every file path it names exists, and the
ops table lists exactly the ops the dispatcher has."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
SUFFIXES = (".py", ".h", ".cpp", ".cu", ".md", ".sh", ".toml", ".png", ".csv")


def _files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return listed.stdout.split()


def _path_like(word: str) -> bool:
    if "<" in word or "*" in word:  # a template (commands/<name>.py) or a glob
        return False
    return word.endswith(SUFFIXES) or (word.endswith("/") and len(word) > 1)


def _named_paths(text: str) -> set[str]:
    """Paths the text names: in inline code, the word before any ': name' or
    space; in fenced blocks, every path-like word."""
    fenced = re.findall(r"```.*?```", text, re.S)
    inline = re.sub(r"```.*?```", "", text, flags=re.S)
    found = set()
    for quoted in re.findall(r"`([^`]+)`", inline):
        word = quoted.split(":")[0].split(" ")[0].rstrip(",.")
        if _path_like(word):
            found.add(word)
    for block in fenced:
        found.update(w.rstrip(",.") for w in block.split() if _path_like(w.rstrip(",.")))
    return found


def _exists(path: str, files: list[str]) -> bool:
    """A file ending in ``path`` (a doc names a file from its room, e.g.
    nn/model.py), or a folder holding such files."""
    if path.endswith("/"):
        return any(f"/{path}" in f"/{f}" for f in files)
    return any(f == path or f.endswith("/" + path) for f in files)


def test_every_path_the_design_document_names_exists():
    files = _files()
    named = _named_paths(DOC.read_text())
    assert len(named) > 40  # the reading works
    missing = sorted(p for p in named if not _exists(p, files))
    assert missing == []


def test_the_ops_table_lists_the_registered_ops():
    pytest.importorskip("subind_fast._C")
    import subind_fast  # noqa: F401 (loads the ops)

    text = DOC.read_text()
    section = text[text.index("## The ops"):text.index("How the Python kernels are registered")]
    listed = {m.group(1) for m in re.finditer(r"^\| `(\w+)`", section, re.M)}
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("subind::")}
    assert listed == registered


def test_a_missing_path_would_be_found():
    assert not _exists("ops/nowhere.py", ["subind_fast/ops/library.py"])
    assert _exists("ops/library.py", ["subind_fast/ops/library.py"])
    assert _named_paths("see `nn/model.py: subnetwork_of` and `ops/cuda/`\n```\nsrc/a.h x\n```"
                        ) == {"nn/model.py", "ops/cuda/", "src/a.h"}
