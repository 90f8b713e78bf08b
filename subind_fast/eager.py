"""The eager kernels: every masked op written with plain PyTorch ops and
differentiated by PyTorch's autograd — the same math as the fused ops
(csrc/include/subind/mask_math.h), at the cost PyTorch pays for it: σ(β·s)
and W_eff are formed at full size and kept for backward.  Selected with
``--kernels eager`` / :func:`subind_fast.set_kernels`, and used for devices
without our kernels (subind_fast/dispatch.py)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import noise as noise_lib
from .backends.reference import penalty_sum

#: the hard-concrete stretch ε: (γ, ζ) = (−ε, 1 + ε); csrc/include/subind/mask_math.h has the same
STRETCH = 0.1


def mask(logits: Tensor, beta: Tensor, mode: str, noise: Optional[Tensor] = None) -> Tensor:
    """m(s): σ(β·s) (soft), 1[s > 0] (hard), 1 (none), or a sample from the
    logistic noise L of the key (concrete: clamp(σ(β(s+L))(1+2ε) − ε, 0, 1);
    gumbel: 1[β(s+L) > 0] with the gradient of σ, straight through)."""
    beta = beta.to(device=logits.device, dtype=logits.dtype).reshape(())
    if mode == "soft":
        return torch.sigmoid(beta * logits)
    if mode == "hard":
        return (logits > 0).to(logits.dtype)
    if mode == "none":
        return torch.ones_like(logits)
    z = beta * (logits + noise_lib.logistic(noise, noise_lib.element_offsets(logits),
                                            logits.dtype))
    y = torch.sigmoid(z)
    if mode == "concrete":
        return (y * (1 + 2 * STRETCH) - STRETCH).clamp(0, 1)
    return (z > 0).to(logits.dtype) + (y - y.detach())


def mask_weight(weight: Tensor, logits: Tensor, beta: Tensor, mode: str,
                noise: Optional[Tensor] = None) -> Tensor:
    m = mask(logits, beta, mode, noise)
    return (weight.to(m.dtype) * m).to(weight.dtype)


def masked_linear(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor],
                  beta: Tensor, mode: str, noise: Optional[Tensor] = None) -> Tensor:
    return F.linear(x, mask_weight(weight, logits, beta, mode, noise), bias)


def masked_conv(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor], beta: Tensor,
                mode: str, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int, noise: Optional[Tensor] = None) -> Tensor:
    zeros = [0] * (weight.dim() - 2)
    return torch.convolution(x, mask_weight(weight, logits, beta, mode, noise), bias, stride,
                             padding, dilation, False, zeros, groups)


def masked_linear_l0(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor],
                     beta: Tensor, mode: str, noise: Optional[Tensor] = None
                     ) -> tuple[Tensor, Tensor]:
    """(y, the logits' L0 penalty); here two separate computations."""
    return (masked_linear(x, weight, logits, bias, beta, mode, noise),
            penalty_sum(logits, beta, mode))


def masked_conv_l0(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor],
                   beta: Tensor, mode: str, stride: Sequence[int], padding: Sequence[int],
                   dilation: Sequence[int], groups: int, noise: Optional[Tensor] = None
                   ) -> tuple[Tensor, Tensor]:
    return (masked_conv(x, weight, logits, bias, beta, mode, stride, padding, dilation, groups,
                        noise), penalty_sum(logits, beta, mode))


def sigmoid_sum(logits: Tensor, beta: Tensor) -> Tensor:
    # Accumulated in float64, as the fused kernels do: an fp32 sum of millions
    # of terms loses the digits a λ-weighted penalty needs.
    return mask(logits, beta, "soft").sum(dtype=torch.float64).to(logits.dtype)
