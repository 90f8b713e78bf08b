"""Pure-PyTorch reference backend: the oracle the tests compare against, and
the backend for any device without compiled kernels.  Same formulas as
csrc/include/subind/mask_math.h, written with torch ops (σ and its slope in
the logits' precision, fp32 or fp64, whatever the weight dtype)."""
from __future__ import annotations

import torch
from torch import Tensor

from .base import ComposedBackend, empty_like_marker


def _opmath(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def mask_and_slope(logits: Tensor, beta: float, mode: str) -> tuple[Tensor, Tensor | None]:
    """m = σ(βs) and m(1−m) = σ(βs)σ(−βs) (soft); 1[s>0] (hard); 1 (none)."""
    s = logits.to(_opmath(logits))
    if mode == "soft":
        z = beta * s
        return torch.sigmoid(z), torch.sigmoid(z) * torch.sigmoid(-z)
    if mode == "hard":
        return (s > 0).to(s.dtype), None
    return torch.ones_like(s), None


def _into_layout_of(weight: Tensor, value: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty_like(weight, dtype=dtype).copy_(value)


class ReferenceBackend(ComposedBackend):
    name = "reference"

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
            gs = _into_layout_of(logits, g * theta * beta * slope, logits.dtype)
        else:
            gs = empty_like_marker(logits)
        return weff, gw, gs

    def sigmoid_sum(self, logits, beta):
        return torch.sigmoid(beta * logits.to(torch.float64)).sum().to(logits.dtype)

    def sigmoid_sum_backward(self, grad, logits, beta):
        _, slope = mask_and_slope(logits, beta, "soft")
        return (grad.to(slope.dtype) * beta * slope).to(logits.dtype)
