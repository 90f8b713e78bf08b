"""The Python side of the ``torch.ops.subind`` ops.

The schemas, and the CPU, Meta, Autograd and Autocast kernels, are C++
(csrc/ops, csrc/cpu; csrc/include/subind has the shared math and host
driver): loading the compiled library registers them.  The CUDA extension
(csrc/cuda), when built, registers the CUDA kernels of the mask ops and the
masked convolutions.  This module registers the Triton launchers
(backends/triton_backend.py) as the CUDA kernels of the rest — the fused
masked GEMMs, the L0 penalty and the optimizer steps, where Triton is the
faster choice — and of everything when the CUDA extension is not built.

The wrappers below are the typed entry points the functional API calls; each
is one call of the op's default overload (about 5 µs of Python on the CPU).
An output that was not requested comes back as an empty [0] tensor
(backends/base.py: ``not_requested``), the one marker of the whole stack.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _extension
from ._validation import MODES

#: the ops of the namespace, in schema order (csrc/ops/schemas.cpp)
OP_NAMES = ("mask_weight", "mask_weight_backward", "masked_linear", "masked_linear_l0",
            "masked_linear_backward", "masked_conv", "masked_conv_l0", "masked_conv_backward",
            "sigmoid_sum", "sigmoid_sum_backward", "adamw_step", "sgd_step")
#: ops the CUDA extension serves when built (the Triton launchers serve the others)
CUDA_EXTENSION_OPS = ("mask_weight", "mask_weight_backward", "masked_conv", "masked_conv_l0",
                      "masked_conv_backward")


def _load() -> Optional[object]:
    """torch.ops.subind with the compiled kernels registered, or None if the
    CPU extension is not built (a kernel call then raises MissingKernelError)."""
    if not _extension.available("_C"):
        return None
    compiled_modes = tuple(_extension.load("_C").MODE_NAMES)
    if compiled_modes != MODES:
        raise ImportError(f"subind_fast._C spells the mask modes {compiled_modes}, this package "
                          f"{MODES}: the build is stale; rebuild with `make build`")
    cuda_built = _extension.available("_C_cuda")
    from .backends.cuda_registration import register_triton_cuda_kernels

    register_triton_cuda_kernels(
        [name for name in OP_NAMES if not (cuda_built and name in CUDA_EXTENSION_OPS)])
    return torch.ops.subind


_NAMESPACE = _load()


def cuda_kernel_source(op_name: str) -> str:
    """Which implementation serves ``op_name`` on CUDA tensors."""
    if op_name in CUDA_EXTENSION_OPS and _extension.available("_C_cuda"):
        return "cuda (C++ extension)"
    return "triton"


def op(name: str):
    """The default overload of ``torch.ops.subind.<name>``."""
    if _NAMESPACE is None:
        _extension.load("_C")  # raises MissingKernelError naming how to build it
    return getattr(_NAMESPACE, name).default


def _missing(name: str):
    def call(*args, **kwargs):
        op(name)  # raises MissingKernelError

    return call


#: the op overloads, bound once (attribute lookups cost on a hot path)
OPS = SimpleNamespace(**{name: op(name) if _NAMESPACE is not None else _missing(name)
                         for name in OP_NAMES})


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
