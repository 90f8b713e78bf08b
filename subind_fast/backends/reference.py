"""Pure-PyTorch reference backend: the oracle the tests compare against, and
the backend for any device without compiled kernels (it serves every op
family).  Same formulas as csrc/include/subind/mask_math.h, written with torch
ops (σ and its slope in the logits' precision, fp32 or fp64, whatever the
weight dtype)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import FAMILIES, ComposedBackend, empty_like_marker


def _opmath(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def beta_like(beta: Tensor, like: Tensor) -> Tensor:
    """β (a one-element tensor, maybe on the CPU) as a 0-d tensor on ``like``'s device and dtype."""
    return beta.to(device=like.device, dtype=like.dtype).reshape(())


def mask_and_slope(logits: Tensor, beta: Tensor, mode: str) -> tuple[Tensor, Tensor | None]:
    """m = σ(βs) and m(1−m) = σ(βs)σ(−βs) (soft); 1[s>0] (hard); 1 (none)."""
    s = logits.to(_opmath(logits))
    if mode == "soft":
        z = beta_like(beta, s) * s
        return torch.sigmoid(z), torch.sigmoid(z) * torch.sigmoid(-z)
    if mode == "hard":
        return (s > 0).to(s.dtype), None
    return torch.ones_like(s), None


def _into_layout_of(weight: Tensor, value: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty_like(weight, dtype=dtype).copy_(value)


def _keep_frozen(new: torch.Tensor, old: torch.Tensor, frozen) -> torch.Tensor:
    return new if frozen is None else torch.where(frozen, old, new)


def _frozen_mask(frozen_bits: torch.Tensor, like: torch.Tensor):
    from ..bits import unpack_bits

    return unpack_bits(frozen_bits, like.shape) if frozen_bits.numel() else None


class ReferenceBackend(ComposedBackend):
    name = "reference"
    devices = None  # any device
    families = frozenset(FAMILIES)

    def mask_weight(self, weight, logits, beta, mode):
        m, _ = mask_and_slope(logits, beta, mode)
        return _into_layout_of(weight, weight.to(m.dtype) * m, weight.dtype)

    def mask_weight_backward(self, grad_weff, weight, logits, beta, mode, need_weff,
                             need_weight_grad, need_logits_grad):
        m, slope = mask_and_slope(logits, beta, mode)
        g = grad_weff.to(m.dtype)
        theta = weight.to(m.dtype)
        weff = (_into_layout_of(weight, theta * m, weight.dtype) if need_weff
                else empty_like_marker(weight))
        gw = (_into_layout_of(weight, g * m, weight.dtype) if need_weight_grad
              else empty_like_marker(weight))
        if need_logits_grad and mode == "soft":
            gs = _into_layout_of(logits, g * theta * beta_like(beta, g) * slope, logits.dtype)
        else:
            gs = empty_like_marker(logits)
        return weff, gw, gs

    def sigmoid_sum(self, logits, beta):
        s = logits.double()
        return torch.sigmoid(beta_like(beta, s) * s).sum().to(logits.dtype)

    def sigmoid_sum_backward(self, grad, logits, beta):
        _, slope = mask_and_slope(logits, beta, "soft")
        return (grad.to(slope.dtype) * beta_like(beta, slope) * slope).to(logits.dtype)

    def adamw_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr,
                   beta1, beta2, eps, weight_decay, step_size, inv_sqrt_bias2):
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

    def sgd_step(self, param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening,
                 weight_decay, nesterov, first_step):
        """torch.optim.SGD's update, frozen elements of parameter and momentum untouched."""
        frozen = _frozen_mask(frozen_bits, param)
        g = grad + weight_decay * param
        if momentum_buffer.numel():
            b_new = g if first_step else momentum * momentum_buffer + (1 - dampening) * g
            momentum_buffer.copy_(_keep_frozen(b_new, momentum_buffer, frozen))
            g = g + momentum * b_new if nesterov else b_new
        param.copy_(_keep_frozen(param - lr * g, param, frozen))
