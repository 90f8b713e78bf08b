"""The kernel choice: fused or eager.  (Which kernel serves an op on a
device is the dispatcher's business: ops/library.py registers them.)

Two choices (``--kernels`` on the command line):

* ``fused`` (the default): our ops, ``torch.ops.subind`` — C++ kernels on the
  CPU (csrc/cpu), on CUDA the CUDA extension's element-wise kernels around
  cuDNN for convolutions and the Triton fused GEMMs for linear layers
  (``backend_info()`` says which serves which op).  Only the inputs are
  saved for backward: nothing weight-sized is kept between the passes.
* ``eager``: the same math written with plain PyTorch ops and differentiated
  by PyTorch (ops/eager.py), as NeuroSurgeon computes it.  It is also
  what a device without our kernels gets (e.g. Apple MPS): the fused kernels
  exist for CPU and CUDA tensors only.

``SUBIND_KERNELS=fused|eager`` sets the choice for a process;
:func:`set_kernels` and :func:`use_kernels` change it in code.  A fused choice
without the compiled library raises MissingKernelError at the first call,
naming how to build it — never a silent switch to the eager kernels.
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import eager, library
from .extensions import available, triton_available

KERNEL_CHOICES = ("fused", "eager")


def _check_choice(choice: str, source: str) -> str:
    if choice not in KERNEL_CHOICES:
        raise ValueError(f"{source}={choice!r} is not one of {KERNEL_CHOICES}")
    return choice


_choice = _check_choice(os.environ.get("SUBIND_KERNELS", "").strip() or "fused", "SUBIND_KERNELS")


def kernels() -> str:
    """The kernel choice in force: "fused" or "eager"."""
    return _choice


def set_kernels(choice: str) -> None:
    """Use the ``choice`` kernels ("fused" or "eager") from now on."""
    global _choice
    _choice = _check_choice(choice, "kernels")


@contextlib.contextmanager
def use_kernels(choice: str):
    """The ``choice`` kernels inside the block, the previous choice after it."""
    before = kernels()
    set_kernels(choice)
    try:
        yield
    finally:
        set_kernels(before)


def fused_for(t: torch.Tensor) -> bool:
    """Whether an op on ``t``'s device runs our fused kernels: CPU and CUDA
    tensors, and meta ones (shapes only, for memory planning)."""
    # (the is_* flags cost a tenth of building t.device)
    return _choice == "fused" and (t.is_cpu or t.is_cuda or t.is_meta)


def kernels_for(t: torch.Tensor):
    """The module whose op functions serve ``t``: ops/library.py (fused) or
    ops/eager.py — both have mask_weight, masked_linear(_l0),
    masked_conv(_l0) and sigmoid_sum with the same signatures."""
    return library if fused_for(t) else eager


def backend_info() -> dict:
    """The kernel choice, which implementation serves each op on each device,
    and what is built."""
    built = available("_C")
    cpu = "cpu (C++)" if built else "not built"
    return {
        "kernels": _choice,
        "devices": {
            "cpu": {name: cpu for name in library.OP_NAMES},
            "cuda": {name: library.cuda_kernel_source(name) for name in library.OP_NAMES},
        },
        "other devices": "eager (a direct torch.ops.subind call: the reference kernels)",
        "compiled": {"_C (schemas, cpu)": built,
                     "_C_cuda (cuda)": available("_C_cuda"),
                     "triton": triton_available()},
        "cpu_capability": library.cpu_capability(),
        "cuda_device": torch.cuda.is_available(),
    }
