"""The eager kernels: every masked op written with plain PyTorch ops and
differentiated by PyTorch's autograd — the math of ops/mask_math.py (the same
as the fused ops'), at the cost PyTorch pays for it: the mask and W_eff are
formed at full size and kept for backward.  Selected with ``--kernels eager``
/ :func:`subind_fast.set_kernels`, and used for devices without our kernels
(ops/choice.py)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .mask_math import differentiable_mask, penalty_sum


def mask_weight(weight: Tensor, logits: Tensor, beta: Tensor, mode: str,
                noise: Optional[Tensor] = None) -> Tensor:
    m = differentiable_mask(logits, beta, mode, noise)
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
    return penalty_sum(logits, beta, "soft")
