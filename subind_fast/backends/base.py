"""The backend interface and the composition every backend shares.

A backend supplies the element-wise mask passes (design.md §1):

    mask_weight:           W_eff = θ ⊙ m(s)
    mask_weight_backward:  from G_W = ∂L/∂W_eff →  W_eff (recomputed),
                           ∂θ = G_W ⊙ m,  ∂s = G_W ⊙ θ ⊙ β·m(1−m)  (soft only)
    sigmoid_sum(_backward): L0 = Σσ(βs), ∂L0/∂s = β·m(1−m)

and :class:`ComposedBackend` turns them into masked linear / convolution
forward and backward around ATen's GEMMs:

    forward:   W_eff = mask_weight(θ, s);  y = x·W_effᵀ + b   (W_eff freed)
    backward:  G_W = Gᵀ·x;  (W_eff, ∂θ, ∂s) = mask_weight_backward(G_W)   (one pass)
               ∂x = G·W_eff;  ∂b = Σ_rows G

Nothing weight-sized is kept between forward and backward; W_eff is recomputed
inside the same pass that produces ∂s.  A backend with fused GEMMs (Triton)
overrides the linear methods.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

EMPTY = (0,)


def empty_like_marker(t: Tensor) -> Tensor:
    """The placeholder an op returns for an output that was not requested."""
    return t.new_empty(EMPTY)


class ComposedBackend:
    name = "abstract"

    # -- element-wise passes (subclasses implement) -------------------------
    def mask_weight(self, weight: Tensor, logits: Tensor, beta: float, mode: str) -> Tensor:
        raise NotImplementedError

    def mask_weight_backward(self, grad_weff: Tensor, weight: Tensor, logits: Tensor,
                             beta: float, mode: str, need_weff: bool, need_weight_grad: bool,
                             need_logits_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def sigmoid_sum(self, logits: Tensor, beta: float) -> Tensor:
        raise NotImplementedError

    def sigmoid_sum_backward(self, grad: Tensor, logits: Tensor, beta: float) -> Tensor:
        raise NotImplementedError

    # -- shared: the part of backward that turns G_W into (W_eff, ∂θ, ∂s) ----
    def _weight_side(self, grad_w: Tensor | None, weight: Tensor, logits: Tensor, beta: float,
                     mode: str, need_x: bool, need_weight: bool, need_logits: bool):
        """(W_eff or None, ∂θ, ∂s) with empty markers for what was not asked."""
        need_logits = need_logits and mode == "soft"
        if grad_w is None or not (need_weight or need_logits):
            weff = self.mask_weight(weight, logits, beta, mode) if need_x else None
            return weff, empty_like_marker(weight), empty_like_marker(logits)
        weff, gw, gs = self.mask_weight_backward(grad_w, weight, logits, beta, mode,
                                                 need_x, need_weight, need_logits)
        return (weff if need_x else None), gw, gs

    # -- linear ---------------------------------------------------------------
    def linear_forward(self, x: Tensor, weight: Tensor, logits: Tensor, bias: Tensor | None,
                       beta: float, mode: str) -> Tensor:
        weff = self.mask_weight(weight, logits, beta, mode)
        return torch.nn.functional.linear(x, weff, bias)

    def linear_backward(self, grad: Tensor, x: Tensor, weight: Tensor, logits: Tensor,
                        beta: float, mode: str, needs: Sequence[bool]):
        need_x, need_w, need_s, need_b = needs
        n_out, n_in = weight.shape
        g2 = grad.reshape(-1, n_out)
        x2 = x.reshape(-1, n_in)
        grad_w = None
        if need_w or (need_s and mode == "soft"):
            # Produce G_W in the weight's own layout so the mask pass reads it
            # without a transpose copy (GPT-2's Conv1D weight is a transposed view).
            if weight.dim() == 2 and weight.stride(0) == 1 and weight.stride(1) != 1:
                grad_w = (x2.t() @ g2).t()
            else:
                grad_w = g2.t() @ x2
        weff, gw, gs = self._weight_side(grad_w, weight, logits, beta, mode, need_x, need_w, need_s)
        gx = (g2 @ weff).reshape(x.shape) if need_x else empty_like_marker(x)
        gb = g2.sum(0) if need_b else empty_like_marker(grad)
        return gx, gw, gs, gb

    # -- convolution (any spatial rank torch.convolution supports) -----------
    def conv_forward(self, x: Tensor, weight: Tensor, logits: Tensor, bias: Tensor | None,
                     beta: float, mode: str, stride, padding, dilation, groups: int) -> Tensor:
        weff = self.mask_weight(weight, logits, beta, mode)
        zeros = [0] * (weight.dim() - 2)
        return torch.convolution(x, weff, bias, stride, padding, dilation, False, zeros, groups)

    def conv_backward(self, grad: Tensor, x: Tensor, weight: Tensor, logits: Tensor,
                      beta: float, mode: str, stride, padding, dilation, groups: int,
                      needs: Sequence[bool]):
        need_x, need_w, need_s, need_b = needs
        zeros = [0] * (weight.dim() - 2)
        bias_sizes = [weight.shape[0]]

        def conv_grads(w: Tensor, mask):
            return torch.ops.aten.convolution_backward(
                grad, x, w, bias_sizes, stride, padding, dilation, False, zeros, groups, mask)

        want_grad_w = need_w or (need_s and mode == "soft")
        grad_w, gb = None, empty_like_marker(grad)
        if want_grad_w or need_b:
            # ∂W and ∂b do not read the weight's values, so θ stands in for W_eff.
            _, grad_w, gb_ = conv_grads(weight, [False, want_grad_w, need_b])
            gb = gb_ if need_b else gb
            grad_w = grad_w if want_grad_w else None
        weff, gw, gs = self._weight_side(grad_w, weight, logits, beta, mode, need_x, need_w, need_s)
        gx = conv_grads(weff, [True, False, False])[0] if need_x else empty_like_marker(x)
        return gx, gw, gs, gb
