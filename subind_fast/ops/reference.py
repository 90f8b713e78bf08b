"""The reference kernels: every ``subind`` op in PyTorch ops, on the math of
ops/mask_math.py — the oracle the tests compare the compiled kernels with,
and each op's default kernel (CompositeExplicitAutograd), so an op called on
a device without compiled kernels computes the right answer.  The sampled
modes' mask passes on CUDA are these too (ops/cuda/kernels.py).

Each function has its op's signature (csrc/ops/schemas.cpp); the backward
ops return an empty [0] tensor for a gradient not asked for."""
from __future__ import annotations

import torch
from torch import Tensor

from .composed import COMPOSED_OPS, Composed, not_requested
from .mask_math import beta_like, mask_and_slope, penalty_sum
from .modes import mode as mode_of


def _into_layout_of(weight: Tensor, value: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty_like(weight, dtype=dtype).copy_(value)


class ReferenceMask(Composed):
    """The mask pass pair of mask_and_slope; linear and convolution composed from it."""

    def mask_weight(self, weight, logits, beta, mode, noise=None):
        m, _ = mask_and_slope(logits, beta, mode, noise)
        return _into_layout_of(weight, weight.to(m.dtype) * m, weight.dtype)

    def mask_weight_backward(self, grad_weff, weight, logits, beta, mode, need_weff,
                             need_weight_grad, need_logits_grad, noise=None):
        m, slope = mask_and_slope(logits, beta, mode, noise)
        g = grad_weff.to(m.dtype)
        theta = weight.to(m.dtype)
        weff = (_into_layout_of(weight, theta * m, weight.dtype) if need_weff
                else not_requested(weight))
        gw = (_into_layout_of(weight, g * m, weight.dtype) if need_weight_grad
              else not_requested(weight))
        if need_logits_grad and mode_of(mode).trains_logits:
            gs = _into_layout_of(logits, g * theta * beta_like(beta, g) * slope, logits.dtype)
        else:
            gs = not_requested(logits)
        return weff, gw, gs


REFERENCE = ReferenceMask()
#: op name → its reference kernel: linear and convolution composed around the
#: reference mask pass, the rest filled by @op_kernel
KERNELS: dict = {name: getattr(REFERENCE, name) for name in COMPOSED_OPS}


def op_kernel(fn):
    """Declares ``fn`` the reference kernel of the op of its name."""
    KERNELS[fn.__name__] = fn
    return fn



@op_kernel
def mask_weight(weight, logits, beta, mode, noise=None):
    return REFERENCE.mask_weight(weight, logits, beta, mode, noise)


@op_kernel
def mask_weight_backward(grad_weff, weight, logits, beta, mode, need_weff, need_weight_grad,
                         need_logits_grad, noise=None):
    return REFERENCE.mask_weight_backward(grad_weff, weight, logits, beta, mode, need_weff,
                                          need_weight_grad, need_logits_grad, noise)


@op_kernel
def sigmoid_sum(logits, beta):
    """Σσ(β·s), accumulated in float64, in the logits' dtype."""
    return penalty_sum(logits, beta, "soft").detach()


@op_kernel
def sigmoid_sum_backward(grad, logits, beta):
    _, slope = mask_and_slope(logits, beta, "soft")
    return (grad.to(slope.dtype) * beta_like(beta, slope) * slope).to(logits.dtype)


def _frozen_mask(frozen_bits: Tensor, like: Tensor):
    from ..bits import unpack_bits

    return unpack_bits(frozen_bits, like.shape) if frozen_bits.numel() else None


def _keep_frozen(new: Tensor, old: Tensor, frozen) -> Tensor:
    return new if frozen is None else torch.where(frozen, old, new)


@op_kernel
def adamw_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr, beta1, beta2,
               eps, weight_decay, step_size, inv_sqrt_bias2) -> None:
    """torch.optim.AdamW's update (csrc/include/subind/optim_math.h), frozen
    elements of parameter and state left untouched."""
    frozen = _frozen_mask(frozen_bits, param)
    m_new = beta1 * exp_avg + (1 - beta1) * grad
    v_new = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    v_used = v_new
    if max_exp_avg_sq.numel():
        v_used = torch.maximum(max_exp_avg_sq, v_new)
        max_exp_avg_sq.copy_(_keep_frozen(v_used, max_exp_avg_sq, frozen))
    p_new = (param * (1 - lr * weight_decay)
             - step_size * m_new / (v_used.sqrt() * inv_sqrt_bias2 + eps))
    param.copy_(_keep_frozen(p_new, param, frozen))
    exp_avg.copy_(_keep_frozen(m_new, exp_avg, frozen))
    exp_avg_sq.copy_(_keep_frozen(v_new, exp_avg_sq, frozen))


@op_kernel
def sgd_step(param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening, weight_decay,
             nesterov, first_step) -> None:
    """torch.optim.SGD's update, frozen elements of parameter and momentum untouched."""
    frozen = _frozen_mask(frozen_bits, param)
    g = grad + weight_decay * param
    if momentum_buffer.numel():
        b_new = g if first_step else momentum * momentum_buffer + (1 - dampening) * g
        momentum_buffer.copy_(_keep_frozen(b_new, momentum_buffer, frozen))
        g = g + momentum * b_new if nesterov else b_new
    param.copy_(_keep_frozen(param - lr * g, param, frozen))


def register_default_kernels() -> None:
    """Each op's reference kernel as its CompositeExplicitAutograd kernel:
    what a device without a kernel of its own runs (below our C++ autograd)."""
    for name, fn in KERNELS.items():
        torch.library.register_kernel(f"subind::{name}", None, fn)
