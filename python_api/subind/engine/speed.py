"""How a run computes, not what: the kernels of the masked layers and
whether the discovery model is compiled (``--kernels``, ``--compile``).

* kernels ``fused`` (default): our ops; ``eager``: the same math in plain
  PyTorch ops (subind_fast/ops/choice.py).  Set once per process.
* compile ``on``: torch.compile of the masked model during discovery (our ops
  are nodes of the graph; Inductor fuses the rest); ``off``: eager; ``auto``:
  the faster one as measured (README, "Kernels and compile"): off on the CPU,
  where the discovery stages' models are small and compiling costs more than
  it saves, on for CUDA.
"""
from __future__ import annotations

import subind_fast as sf

KERNEL_CHOICES = sf.ops.choice.KERNEL_CHOICES
COMPILE_CHOICES = ("auto", "on", "off")


def check_speed_options(kernels: str, compile_choice: str) -> None:
    if kernels not in KERNEL_CHOICES:
        raise ValueError(f"kernels must be one of {KERNEL_CHOICES}, got {kernels!r}")
    if compile_choice not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {COMPILE_CHOICES}, got {compile_choice!r}")


def compile_wanted(compile_choice: str, device: str) -> bool:
    """Whether discovery compiles the masked model on ``device``."""
    if compile_choice == "auto":
        return str(device).startswith("cuda")
    return compile_choice == "on"


def apply_speed_options(kernels: str, compile_choice: str, device: str) -> bool:
    """Select the kernels for this process; return whether to compile."""
    check_speed_options(kernels, compile_choice)
    sf.set_kernels(kernels)
    return compile_wanted(compile_choice, device)
