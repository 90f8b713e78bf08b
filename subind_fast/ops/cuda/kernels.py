"""The CUDA kernels of the ``subind`` ops that are written in Python, each
declared the CUDA kernel of its op where it is defined (``@cuda_kernel``):
the Triton launchers (triton_launch.py) for the fused masked GEMMs, the L0
penalty and the optimizer steps, and the composition of the mask ops with
cuBLAS/cuDNN (ops/composed.py) where Triton has no kernel — the sampled
modes' linear layers, and the convolutions.  The CUDA extension (csrc/cuda),
when built, serves the mask passes and convolutions itself: ops/library.py
registers only the kernels below whose op has no CUDA kernel yet (it asks the
dispatcher).  The *_l0 ops fuse the L0 penalty into the Triton pass; on the
composed path the penalty and its gradient are a separate element-wise pass.

Importing this module touches neither CUDA nor Triton: a kernel builds the
Triton launchers on its first call."""
from __future__ import annotations

from functools import lru_cache

import torch

from ..checks import check_input
from ..composed import Composed
from ..extensions import MissingKernelError, triton_available
from ..modes import mode as mode_of

#: op name → its Python CUDA kernel, filled by @cuda_kernel
KERNELS: dict = {}


def cuda_kernel(fn):
    """Declares ``fn`` the CUDA kernel of the op of its name."""
    KERNELS[fn.__name__] = fn
    return fn


def register(op_names) -> list[str]:
    """Registers the kernels of ``op_names`` for the CUDA dispatch key; returns them."""
    for name in op_names:
        torch.library.register_kernel(f"subind::{name}", "cuda", KERNELS[name])
    return list(op_names)


@lru_cache(maxsize=None)
def _triton():
    if not triton_available():
        raise MissingKernelError(
            "CUDA tensors need `pip install triton` for the subind kernels (or the eager "
            "kernels: subind_fast.set_kernels('eager'))")
    from .triton_launch import TritonKernels

    return TritonKernels()


class _OpsComposed(Composed):
    """Linear and convolution composed from the registered mask ops (whichever
    CUDA kernel serves them) and ATen's GEMMs."""

    def mask_weight(self, weight, logits, beta, mode, noise=None):
        return torch.ops.subind.mask_weight.default(weight, logits, beta, mode, noise)

    def mask_weight_backward(self, grad_weff, weight, logits, beta, mode, need_weff,
                             need_weight_grad, need_logits_grad, noise=None):
        return torch.ops.subind.mask_weight_backward.default(
            grad_weff, weight, logits, beta, mode, need_weff, need_weight_grad,
            need_logits_grad, noise)


_COMPOSED = _OpsComposed()
# Convolutions: the mask ops around cuDNN (when the CUDA extension serves
# none of these itself).
KERNELS.update({name: getattr(_COMPOSED, name) for name in
                ("masked_conv", "masked_conv_l0", "masked_conv_backward")})


def _not_a_view(y):
    # A reshaped GEMM result is a view, which autograd would forbid modifying
    # in place (timm's `qkv += bias`); detach() is the same memory, not a view.
    return y.detach() if y._is_view() else y


@cuda_kernel
def mask_weight(weight, logits, beta, mode, noise=None):
    if mode_of(mode).sampled:  # no Triton kernel for the sampled masks
        from ..reference import REFERENCE

        return REFERENCE.mask_weight(weight, logits, beta, mode, noise)
    return _triton().mask_weight(weight, logits, beta, mode)


@cuda_kernel
def mask_weight_backward(grad_weff, weight, logits, beta, mode, need_weff, need_weight_grad,
                         need_logits_grad, noise=None):
    if mode_of(mode).sampled:
        from ..reference import REFERENCE

        return REFERENCE.mask_weight_backward(grad_weff, weight, logits, beta, mode, need_weff,
                                              need_weight_grad, need_logits_grad, noise)
    return _triton().mask_weight_backward(grad_weff, weight, logits, beta, mode, need_weff,
                                          need_weight_grad, need_logits_grad)


@cuda_kernel
def masked_linear(x, weight, logits, bias, beta, mode, noise=None):
    # The layers call the op unchecked; the CPU kernel checks in C++.
    check_input(x, weight, bias, -1, weight.shape[1], "subind::masked_linear")
    if mode_of(mode).sampled:
        return _not_a_view(_COMPOSED.masked_linear(x, weight, logits, bias, beta, mode, noise))
    return _not_a_view(_triton().linear_forward(x, weight, logits, bias, beta, mode))


@cuda_kernel
def masked_linear_l0(x, weight, logits, bias, beta, mode, noise=None):
    if mode_of(mode).sampled:
        y, penalty = _COMPOSED.masked_linear_l0(x, weight, logits, bias, beta, mode, noise)
        return _not_a_view(y), penalty
    check_input(x, weight, bias, -1, weight.shape[1], "subind::masked_linear_l0")
    y, penalty = _triton().linear_forward_l0(x, weight, logits, bias, beta, mode)
    return _not_a_view(y), penalty


@cuda_kernel
def masked_linear_backward(grad, x, weight, logits, beta, mode, needs, noise=None,
                           grad_l0=None):
    if mode_of(mode).sampled:
        grads = _COMPOSED.masked_linear_backward(grad.contiguous(), x, weight, logits, beta,
                                                 mode, needs, noise, grad_l0)
    else:
        grads = _triton().linear_backward(grad.contiguous(), x, weight, logits, beta, mode,
                                          list(needs), grad_l0=grad_l0)
    gx, gw, gs, gb = grads
    return gx.contiguous(), gw, gs, gb


@cuda_kernel
def sigmoid_sum(logits, beta):
    return _triton().sigmoid_sum(logits, beta)


@cuda_kernel
def sigmoid_sum_backward(grad, logits, beta):
    return _triton().sigmoid_sum_backward(grad, logits, beta)


@cuda_kernel
def adamw_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr, beta1, beta2,
               eps, weight_decay, step_size, inv_sqrt_bias2):
    _triton().adamw_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr,
                         beta1, beta2, eps, weight_decay, step_size, inv_sqrt_bias2)


@cuda_kernel
def sgd_step(param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening, weight_decay,
             nesterov, first_step):
    _triton().sgd_step(param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening,
                       weight_decay, nesterov, first_step)
