"""The CUDA kernels of the ``subind`` ops that are written in Python: the
Triton launchers (triton_backend.py), and the composition of the mask ops
with cuBLAS/cuDNN where Triton has no kernel (the sampled modes).  The *_l0
ops fuse the L0 penalty into the Triton pass (soft mode) and into the CUDA
extension's convolution pass; on the composed path (the sampled modes' linear
layers) the penalty and its gradient are a separate element-wise pass
(reference.penalty_and_slope).  They are
registered under the ops' C++ schemas for the CUDA dispatch key, so eager
calls, torch.compile and autograd reach them as they reach the C++ kernels.

Importing this module touches neither CUDA nor Triton: a kernel imports the
Triton backend on its first call."""
from __future__ import annotations

from functools import lru_cache

import torch

from .. import _extension
from .._validation import check_input
from .base import NoiseKeyedMaskBackend

_REGISTERED: list = []


@lru_cache(maxsize=None)
def _triton():
    if not _extension.triton_available():
        raise _extension.MissingKernelError(
            "CUDA tensors need `pip install triton` for the subind kernels (or the eager "
            "kernels: subind_fast.set_kernels('eager'))")
    from .triton_backend import TritonBackend

    return TritonBackend()


class _OpsComposed(NoiseKeyedMaskBackend):
    """Linear and convolution composed from the registered mask ops (whichever
    CUDA kernel serves them) and ATen's GEMMs: the sampled modes' path."""

    name = "composed"
    devices = frozenset({"cuda"})
    families = frozenset({"mask", "linear", "conv", "sampled"})

    def mask_weight(self, weight, logits, beta, mode, noise=None):
        return torch.ops.subind.mask_weight.default(weight, logits, beta, mode, noise)

    def mask_weight_backward(self, grad_weff, weight, logits, beta, mode, need_weff,
                             need_weight_grad, need_logits_grad, noise=None):
        return torch.ops.subind.mask_weight_backward.default(
            grad_weff, weight, logits, beta, mode, need_weff, need_weight_grad,
            need_logits_grad, noise)


_COMPOSED = _OpsComposed()


def _reference():
    from .reference import ReferenceBackend

    return ReferenceBackend()


def mask_weight(weight, logits, beta, mode, noise=None):
    if noise is not None:  # no Triton kernel for the sampled masks
        return _reference().sampled_mask_weight(weight, logits, beta, mode, noise)
    return _triton().mask_weight(weight, logits, beta, mode)


def mask_weight_backward(grad_weff, weight, logits, beta, mode, need_weff, need_weight_grad,
                         need_logits_grad, noise=None):
    if noise is not None:
        return _reference().sampled_mask_weight_backward(
            grad_weff, weight, logits, beta, mode, noise, need_weff, need_weight_grad,
            need_logits_grad)
    return _triton().mask_weight_backward(grad_weff, weight, logits, beta, mode, need_weff,
                                          need_weight_grad, need_logits_grad)


def masked_linear(x, weight, logits, bias, beta, mode, noise=None):
    # The layers call the op unchecked; the CPU kernel checks in C++.
    check_input(x, weight, bias, -1, weight.shape[1], "subind::masked_linear")
    backend = _COMPOSED if noise is not None else _triton()
    y = backend.linear_forward(x, weight, logits, bias, beta, mode, noise)
    # A reshaped GEMM result is a view, which autograd would forbid modifying
    # in place (timm's `qkv += bias`); detach() is the same memory, not a view.
    return y.detach() if y._is_view() else y


def masked_linear_l0(x, weight, logits, bias, beta, mode, noise=None):
    if noise is None:
        check_input(x, weight, bias, -1, weight.shape[1], "subind::masked_linear_l0")
        y, penalty = _triton().linear_forward_l0(x, weight, logits, bias, beta, mode)
        return (y.detach() if y._is_view() else y), penalty
    from .reference import penalty_sum

    return masked_linear(x, weight, logits, bias, beta, mode, noise), penalty_sum(logits, beta,
                                                                                  mode)


def _with_penalty_grad(grads, logits, beta, mode, grad_l0):
    """A composed backward's (∂x, ∂θ, ∂s, ∂b) with the penalty's gradient added to ∂s."""
    if grad_l0 is None:
        return grads
    from .reference import add_penalty_grad

    gx, gw, gs, gb = grads
    return gx, gw, add_penalty_grad(gs, logits, beta, mode, grad_l0), gb


def masked_linear_backward(grad, x, weight, logits, beta, mode, needs, noise=None,
                           grad_l0=None):
    if noise is None:
        grads = _triton().linear_backward(grad.contiguous(), x, weight, logits, beta, mode,
                                          list(needs), grad_l0=grad_l0)
    else:
        grads = _with_penalty_grad(
            _COMPOSED.linear_backward(grad.contiguous(), x, weight, logits, beta, mode,
                                      list(needs), noise), logits, beta, mode, grad_l0)
    gx, gw, gs, gb = grads
    return gx.contiguous(), gw, gs, gb


def masked_conv(x, weight, logits, bias, beta, mode, stride, padding, dilation, groups,
                noise=None):
    return _COMPOSED.conv_forward(x, weight, logits, bias, beta, mode, stride, padding, dilation,
                                  groups, noise)


def masked_conv_l0(x, weight, logits, bias, beta, mode, stride, padding, dilation, groups,
                   noise=None):
    from .reference import penalty_sum

    return (masked_conv(x, weight, logits, bias, beta, mode, stride, padding, dilation, groups,
                        noise), penalty_sum(logits, beta, mode))


def masked_conv_backward(grad, x, weight, logits, beta, mode, stride, padding, dilation, groups,
                         needs, noise=None, grad_l0=None):
    gx, gw, gs, gb = _with_penalty_grad(
        _COMPOSED.conv_backward(grad, x, weight, logits, beta, mode, stride, padding, dilation,
                                groups, list(needs), noise), logits, beta, mode, grad_l0)
    return gx.contiguous(), gw, gs, gb


def sigmoid_sum(logits, beta):
    return _triton().sigmoid_sum(logits, beta)


def sigmoid_sum_backward(grad, logits, beta):
    return _triton().sigmoid_sum_backward(grad, logits, beta)


def adamw_step(*args):
    _triton().adamw_step(*args)


def sgd_step(*args):
    _triton().sgd_step(*args)


def register_triton_cuda_kernels(op_names) -> None:
    """Register the kernels above for the CUDA dispatch key of ``op_names`` (once)."""
    if _REGISTERED:
        return
    library = torch.library.Library("subind", "IMPL")
    for name in op_names:
        library.impl(name, globals()[name], "CUDA")
    _REGISTERED.append(library)  # the registrations live as long as the library object
