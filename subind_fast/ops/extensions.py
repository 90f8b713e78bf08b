"""Loading of the compiled extensions.

``import subind_fast`` never fails because a compiled part is missing: each
extension is loaded on first use, and a missing one raises
:class:`MissingKernelError` naming what is missing and how to build it.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from types import ModuleType

_BUILD_HINT = {
    "_C": "the compiled library is built by `pip install --no-build-isolation -e .` "
          "(or `make build`); the eager kernels (plain PyTorch ops) need no build: "
          "subind_fast.set_kernels('eager'), SUBIND_KERNELS=eager or --kernels eager",
    "_C_cuda": "the CUDA extension builds when a CUDA toolkit matching torch.version.cuda is "
               "found at install time (see setup.py); without it the Triton kernels serve CUDA",
}


class MissingKernelError(RuntimeError):
    """A compiled kernel was requested but its extension is not built."""


@lru_cache(maxsize=None)
def _try_load(name: str) -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module(f"subind_fast.{name}"), ""
    except ImportError as err:  # not built, or built against another torch
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
