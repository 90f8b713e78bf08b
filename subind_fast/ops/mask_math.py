"""The per-element mask math in PyTorch ops: the same formulas as the
kernels (csrc/include/subind/mask_math.h), in the logits' precision (fp32 or
fp64) whatever the weight's dtype.  The eager kernels (ops/eager.py), the
reference kernels (ops/reference.py) and the masks of per-unit logits
(nn/methods.py) all take m and its slope from ``mask_and_slope``, and the L0
penalty from ``penalty_and_slope``.

    soft:      m = σ(βs),                        slope = σ(βs)σ(−βs)
    hard:      m = 1[s > 0]                      (no gradient)
    none:      m = 1                             (no gradient)
    concrete:  y = σ(β(s + L)), t = y(1 + 2ε) − ε, m = clamp(t, 0, 1),
               slope = 1[0 < t < 1]·(1 + 2ε)·y(1 − y)
    gumbel:    m = 1[β(s + L) > 0],              slope = y(1 − y)   (straight through)

∂L/∂s = ∂L/∂m · β · slope; L is the logistic noise of the key (ops/noise.py)
and ε the stretch (ops/modes.py).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import noise as noise_lib
from .modes import STRETCH, TRAINING_MODE_NAMES, ZERO_GATE_LOG_ODDS, mode as mode_of


def opmath_dtype(logits: Tensor) -> torch.dtype:
    """The precision of the mask math: fp64 for fp64 logits, else fp32."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def beta_like(beta: Tensor, like: Tensor) -> Tensor:
    """β (a one-element tensor, maybe on the CPU) as a 0-d tensor on ``like``'s device and dtype."""
    return beta.to(device=like.device, dtype=like.dtype).reshape(())


def _sigmoid_and_slope(z: Tensor) -> tuple[Tensor, Tensor]:
    y = torch.sigmoid(z)
    return y, y * torch.sigmoid(-z)


def mask_and_slope(logits: Tensor, beta: Tensor, mode: str,
                   noise: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
    """(m, slope) of the module doc, in the opmath dtype; slope is None for
    the modes that pass no gradient.  ``noise`` is a sampled mode's key."""
    spec = mode_of(mode)
    s = logits.to(opmath_dtype(logits))
    if spec.sampled:
        z = beta_like(beta, s) * (s + noise_lib.logistic(noise, noise_lib.element_offsets(logits),
                                                         s.dtype))
        y, dy = _sigmoid_and_slope(z)
        if spec.name == "concrete":
            t = y * (1 + 2 * STRETCH) - STRETCH
            inside = (t > 0) & (t < 1)
            return t.clamp(0, 1), torch.where(inside, (1 + 2 * STRETCH) * dy,
                                              torch.zeros_like(dy))
        return (z > 0).to(s.dtype), dy
    if spec.trains_logits:  # soft
        return _sigmoid_and_slope(beta_like(beta, s) * s)
    if spec.name == "hard":
        return (s > 0).to(s.dtype), None
    return torch.ones_like(s), None


def differentiable_mask(logits: Tensor, beta: Tensor, mode: str,
                        noise: Optional[Tensor] = None) -> Tensor:
    """m in the logits' dtype, differentiable by autograd with ∂m/∂s = β·slope:
    m + β·slope·(s − sg(s)) has value m and that derivative."""
    m, slope = mask_and_slope(logits, beta, mode, noise)
    m = m.to(logits.dtype)
    if slope is None or not logits.requires_grad:
        return m
    scale = (beta_like(beta, slope) * slope).to(logits.dtype)
    return m.detach() + scale.detach() * (logits - logits.detach())


def penalty_and_slope(logits: Tensor, beta: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """The L0 penalty of each logit of a training mode and its derivative
    (mask_math.h: penalty_and_slope), in the opmath dtype: σ(βs) and
    β·σ(βs)σ(−βs) (soft); P(m ≠ 0) = σ(s + ZERO_GATE_LOG_ODDS/β) and its
    slope (concrete); s and 1 (gumbel).  The layer's penalty is the sum."""
    spec = mode_of(mode)
    if not spec.trains_logits:
        raise ValueError(f"the L0 penalty belongs to the training modes {TRAINING_MODE_NAMES}, "
                         f"got mode {mode!r}")
    s = logits.to(opmath_dtype(logits))
    b = beta_like(beta, s)
    if spec.name == "gumbel":
        return s, torch.ones_like(s)
    if spec.name == "soft":
        p, slope = _sigmoid_and_slope(b * s)
        return p, b * slope
    return _sigmoid_and_slope(s + ZERO_GATE_LOG_ODDS / b)  # concrete


def penalty_sum(logits: Tensor, beta: Tensor, mode: str) -> Tensor:
    """Σ of penalty_and_slope's penalty, accumulated in float64, in the logits'
    dtype; differentiable by autograd."""
    return penalty_and_slope(logits, beta, mode)[0].sum(dtype=torch.float64).to(logits.dtype)


def add_penalty_grad(grad_s: Tensor, logits: Tensor, beta: Tensor, mode: str,
                     grad_l0: Optional[Tensor]) -> Tensor:
    """∂s plus grad_l0·∂p/∂s (the backward of a *_l0 op on a composed path)."""
    if grad_l0 is None or grad_s.numel() == 0:
        return grad_s
    _, slope = penalty_and_slope(logits, beta, mode)
    return (grad_s.to(slope.dtype) + grad_l0.to(slope).reshape(()) * slope).to(grad_s.dtype)
