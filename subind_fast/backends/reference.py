"""Pure-PyTorch reference backend: the oracle the tests compare against, and
the backend for any device without compiled kernels (it serves every op
family).  Same formulas as csrc/include/subind/mask_math.h, written with torch
ops (σ and its slope in the logits' precision, fp32 or fp64, whatever the
weight dtype)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import noise as noise_lib
from .._validation import SAMPLED_MODES, TRAINING_MODES
from .base import FAMILIES, NoiseKeyedMaskBackend, not_requested

#: the hard-concrete stretch ε: (γ, ζ) = (−ε, 1 + ε) (Louizos et al.'s −0.1, 1.1);
#: csrc/include/subind/mask_math.h has the same constant
STRETCH = 0.1
#: −log(−γ/ζ) = −log(ε/(1+ε)): a hard-concrete gate is non-zero with probability
#: σ(s + this/β) (mask_math.h: kZeroGateLogOdds)
ZERO_GATE_LOG_ODDS = -math.log(STRETCH / (1 + STRETCH))


def _opmath(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def beta_like(beta: Tensor, like: Tensor) -> Tensor:
    """β (a one-element tensor, maybe on the CPU) as a 0-d tensor on ``like``'s device and dtype."""
    return beta.to(device=like.device, dtype=like.dtype).reshape(())


def sampled_mask_and_slope(s: Tensor, beta: Tensor, mode: str, noise: Tensor
                           ) -> tuple[Tensor, Tensor]:
    """Given the logistic noise L (shaped like s): z = β(s + L), y = σ(z);
    concrete: m = clamp(y(1+2ε) − ε, 0, 1), slope = 1[0 < t < 1]·(1+2ε)·y(1−y);
    gumbel: m = 1[z > 0], slope = y(1−y) (straight-through);  ∂s = g·θ·β·slope."""
    z = beta_like(beta, s) * (s + noise)
    y, dy = torch.sigmoid(z), torch.sigmoid(z) * torch.sigmoid(-z)
    if mode == "concrete":
        t = y * (1 + 2 * STRETCH) - STRETCH
        inside = (t > 0) & (t < 1)
        return t.clamp(0, 1), torch.where(inside, (1 + 2 * STRETCH) * dy, torch.zeros_like(dy))
    return (z > 0).to(s.dtype), dy


def mask_and_slope(logits: Tensor, beta: Tensor, mode: str,
                   noise: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """m = σ(βs) and m(1−m) = σ(βs)σ(−βs) (soft); 1[s>0] (hard); 1 (none);
    a sampled mask and its slope (sampled modes; ``noise`` is the key)."""
    s = logits.to(_opmath(logits))
    if mode in SAMPLED_MODES:
        return sampled_mask_and_slope(
            s, beta, mode, noise_lib.logistic(noise, noise_lib.element_offsets(logits), s.dtype))
    if mode == "soft":
        z = beta_like(beta, s) * s
        return torch.sigmoid(z), torch.sigmoid(z) * torch.sigmoid(-z)
    if mode == "hard":
        return (s > 0).to(s.dtype), None
    return torch.ones_like(s), None


def penalty_and_slope(logits: Tensor, beta: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """The L0 penalty of each logit of a training mode and its derivative
    (mask_math.h: penalty_and_slope), in the logits' precision: σ(βs) and
    β·σ(βs)σ(−βs) (soft); P(m ≠ 0) = σ(s + ZERO_GATE_LOG_ODDS/β) and its
    slope (concrete); s and 1 (gumbel).  The layer's penalty is the sum."""
    if mode not in TRAINING_MODES:
        raise ValueError(f"the L0 penalty belongs to the training modes {TRAINING_MODES}, "
                         f"got mode {mode!r}")
    s = logits.to(_opmath(logits))
    b = beta_like(beta, s)
    if mode == "gumbel":
        return s, torch.ones_like(s)
    z = b * s if mode == "soft" else s + ZERO_GATE_LOG_ODDS / b
    slope = torch.sigmoid(z) * torch.sigmoid(-z)
    return torch.sigmoid(z), (b * slope if mode == "soft" else slope)


def penalty_sum(logits: Tensor, beta: Tensor, mode: str) -> Tensor:
    """Σ of penalty_and_slope's penalty, accumulated in float64, in the logits' dtype."""
    return penalty_and_slope(logits, beta, mode)[0].sum(dtype=torch.float64).to(logits.dtype)


def add_penalty_grad(grad_s: Tensor, logits: Tensor, beta: Tensor, mode: str,
                     grad_l0: Tensor | None) -> Tensor:
    """∂s plus grad_l0·∂p/∂s (the backward of a *_l0 op on a composed path)."""
    if grad_l0 is None or grad_s.numel() == 0:
        return grad_s
    _, slope = penalty_and_slope(logits, beta, mode)
    return (grad_s.to(slope.dtype) + grad_l0.to(slope).reshape(()) * slope).to(grad_s.dtype)


def _into_layout_of(weight: Tensor, value: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty_like(weight, dtype=dtype).copy_(value)


def _keep_frozen(new: torch.Tensor, old: torch.Tensor, frozen) -> torch.Tensor:
    return new if frozen is None else torch.where(frozen, old, new)


def _frozen_mask(frozen_bits: torch.Tensor, like: torch.Tensor):
    from ..bits import unpack_bits

    return unpack_bits(frozen_bits, like.shape) if frozen_bits.numel() else None


class ReferenceBackend(NoiseKeyedMaskBackend):
    name = "reference"
    devices = None  # any device
    families = frozenset(FAMILIES)

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
        if need_logits_grad and mode in TRAINING_MODES:
            gs = _into_layout_of(logits, g * theta * beta_like(beta, g) * slope, logits.dtype)
        else:
            gs = not_requested(logits)
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
