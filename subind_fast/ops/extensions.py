"""Loading of the compiled extensions.

``import subind_fast`` never fails because a compiled part is missing: each
extension is loaded on first use, and a missing one raises
:class:`MissingKernelError` naming what is missing and how to build it.  The
build writes what it compiled against beside the extensions
(``subind_fast/_built_with.json``); extensions built against another torch
minor release are not loaded (their ABI differs: loading them could crash or
miscompute), and the error names both versions.
"""
from __future__ import annotations

import importlib
import json
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

BUILD_RECORD = Path(__file__).resolve().parents[1] / "_built_with.json"

_BUILD_HINT = {
    "_C": "the compiled library is built by `pip install --no-build-isolation -e .` "
          "(or `make build`); the eager kernels (plain PyTorch ops) need no build: "
          "subind_fast.set_kernels('eager'), SUBIND_KERNELS=eager or --kernels eager",
    "_C_cuda": "the CUDA extension builds when a CUDA toolkit matching torch.version.cuda is "
               "found at install time (see setup.py); without it the Triton kernels serve CUDA",
}


class MissingKernelError(RuntimeError):
    """A compiled kernel was requested but its extension is not built."""


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def torch_mismatch(record: Path, running: str) -> str:
    """Why extensions built as ``record`` says cannot serve torch ``running``
    ('' when they can, or when there is no record: a build older than it)."""
    if not record.exists():
        return ""
    built = json.loads(record.read_text())["torch"]
    if _minor(built) == _minor(running):
        return ""
    return (f"its compiled parts were built against torch {built}, but torch {running} is "
            f"installed; install the torch they were built for (pip install "
            f"'torch=={_minor(built)}.*') or rebuild them against this one (`make build`, or "
            f"`pip install --no-build-isolation --force-reinstall .` in a clone)")


@lru_cache(maxsize=None)
def _try_load(name: str) -> tuple[ModuleType | None, str]:
    mismatch = torch_mismatch(BUILD_RECORD, torch.__version__)
    if mismatch:
        return None, mismatch
    try:
        return importlib.import_module(f"subind_fast.{name}"), ""
    except ImportError as err:  # not built, or built by a build that kept no record
        return None, str(err)


def available(name: str) -> bool:
    """Whether the compiled extension ``name`` ("_C", "_C_cuda") loads."""
    return _try_load(name)[0] is not None


def load(name: str) -> ModuleType:
    module, error = _try_load(name)
    if module is None:
        raise MissingKernelError(
            f"subind_fast.{name} is not available ({error}); {_BUILD_HINT[name]}")
    return module


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
