"""The compiled library and the typed entry points of the ``torch.ops.subind`` ops.

The schemas, and the CPU, Meta, Autograd and Autocast kernels, are C++
(csrc/ops, csrc/cpu; csrc/include/subind has the shared math and host
driver): loading the compiled library registers them.  The CUDA extension
(csrc/cuda), when built, registers the CUDA kernels of the mask passes and
the masked convolutions.  Then the Python CUDA kernels (ops/cuda/kernels.py)
are registered for every op that has no CUDA kernel yet — the fused masked
GEMMs, the L0 penalty and the optimizer steps, where Triton is the faster
choice, and everything when the CUDA extension is not built — and the
reference kernels (ops/reference.py) as every op's default kernel.  The op
list and which kernel serves which op are read from the dispatcher.

``import subind_fast`` never fails because a compiled part is missing: a
missing extension raises MissingKernelError (ops/extensions.py) at the first
kernel call, naming what is missing and how to build it.

The wrappers below are the typed entry points the functional API calls; each
is one call of the op's default overload (about 5 µs of Python on the CPU).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional, Sequence

import torch
from torch import Tensor

from .extensions import available, load
from .modes import check_compiled_table


def _registered_ops() -> tuple[str, ...]:
    """The ops of the ``subind`` namespace, as the dispatcher knows them."""
    return tuple(sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                        if name.startswith("subind::")))


def _has_cuda_kernel(name: str) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"subind::{name}", "CUDA")


def _load() -> tuple[tuple[str, ...], frozenset]:
    """(the op names, the ops the CUDA extension serves), with every kernel
    registered; ((), ∅) if the compiled library is not built."""
    if not available("_C"):
        return (), frozenset()
    compiled = load("_C")
    check_compiled_table(compiled.MODE_NAMES, compiled.STRETCH)
    # The CPU loops' capability is chosen now, so a bad SUBIND_CPU_CAPABILITY
    # fails the import, naming the variable, rather than a later op call.
    compiled.cpu_capability()
    available("_C_cuda")  # registers its CUDA kernels when built
    names = _registered_ops()
    from . import reference
    from .cuda import kernels as cuda_kernels

    extension_served = frozenset(n for n in names if _has_cuda_kernel(n))
    unknown = set(cuda_kernels.KERNELS) ^ set(names)
    if unknown:
        raise ImportError(f"the compiled ops and the Python kernels differ in {sorted(unknown)}: "
                          "the build is stale; rebuild with `make build`")
    cuda_kernels.register(n for n in names if n not in extension_served)
    reference.register_default_kernels()
    return names, extension_served


#: the ops of the namespace, and those the CUDA extension serves (the Python
#: CUDA kernels serve the rest)
OP_NAMES, CUDA_EXTENSION_OPS = _load()


def cpu_capability() -> dict:
    """Which CPU capability's loops run ("default": baseline x86-64, "avx2",
    "avx512"), which the running CPU could run, and the override's name."""
    if not OP_NAMES:
        return {"running": None, "runnable": (), "override": "SUBIND_CPU_CAPABILITY"}
    compiled = load("_C")
    return {"running": compiled.cpu_capability(),
            "runnable": tuple(compiled.runnable_cpu_capabilities()),
            "override": "SUBIND_CPU_CAPABILITY"}


def cuda_kernel_source(op_name: str) -> str:
    """Which implementation serves ``op_name`` on CUDA tensors."""
    return "cuda (C++ extension)" if op_name in CUDA_EXTENSION_OPS else "triton"


def op(name: str):
    """The default overload of ``torch.ops.subind.<name>``."""
    if not OP_NAMES:
        load("_C")  # raises MissingKernelError naming how to build it
    return getattr(torch.ops.subind, name).default


class _NotBuilt:
    """OPS without the compiled library: any op raises MissingKernelError."""

    def __getattr__(self, name: str):
        load("_C")  # raises MissingKernelError naming how to build it


#: the op overloads, bound once (attribute lookups cost on a hot path)
OPS = SimpleNamespace(**{name: op(name) for name in OP_NAMES}) if OP_NAMES else _NotBuilt()


def mask_weight(weight: Tensor, logits: Tensor, beta: Tensor, mode: str,
                noise: Optional[Tensor] = None) -> Tensor:
    return OPS.mask_weight(weight, logits, beta, mode, noise)


def masked_linear(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor],
                  beta: Tensor, mode: str, noise: Optional[Tensor] = None) -> Tensor:
    return OPS.masked_linear(x, weight, logits, bias, beta, mode, noise)


def masked_linear_l0(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor],
                     beta: Tensor, mode: str, noise: Optional[Tensor] = None
                     ) -> tuple[Tensor, Tensor]:
    return OPS.masked_linear_l0(x, weight, logits, bias, beta, mode, noise)


def masked_conv(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor], beta: Tensor,
                mode: str, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int, noise: Optional[Tensor] = None) -> Tensor:
    return OPS.masked_conv(x, weight, logits, bias, beta, mode, stride, padding, dilation,
                           groups, noise)


def masked_conv_l0(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor],
                   beta: Tensor, mode: str, stride: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int], groups: int, noise: Optional[Tensor] = None
                   ) -> tuple[Tensor, Tensor]:
    return OPS.masked_conv_l0(x, weight, logits, bias, beta, mode, stride, padding, dilation,
                              groups, noise)


def sigmoid_sum(logits: Tensor, beta: Tensor) -> Tensor:
    return OPS.sigmoid_sum(logits, beta)


def adamw_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr, beta1, beta2,
               eps, weight_decay, step_size, inv_sqrt_bias2) -> None:
    OPS.adamw_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr, beta1,
                   beta2, eps, weight_decay, step_size, inv_sqrt_bias2)


def sgd_step(param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening, weight_decay,
             nesterov, first_step) -> None:
    OPS.sgd_step(param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening,
                 weight_decay, nesterov, first_step)
