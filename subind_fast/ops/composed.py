"""Masked linear and convolution composed from a mask pass pair and ATen's
GEMMs — the kernels of the ops where no fused GEMM serves them (the
reference kernels, ops/reference.py; on CUDA the sampled modes' linear layers
and every convolution, ops/cuda/kernels.py):

    forward:   W_eff = mask_weight(θ, s);  y = x·W_effᵀ + b   (W_eff freed)
    backward:  G_W = Gᵀ·x;  (W_eff, ∂θ, ∂s) = mask_weight_backward(G_W)   (one pass)
               ∂x = G·W_eff;  ∂b = Σ_rows G

Nothing weight-sized is kept between forward and backward.  β arrives as a
one-element tensor (on the logits' device or the CPU), never a Python float,
so annealing it neither recompiles a graph nor syncs a GPU.  An output that
was not requested comes back as an empty [0] tensor (``not_requested``), the
one marker of the whole stack (csrc/include/subind/mask_driver.h:
empty_marker).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .mask_math import add_penalty_grad, penalty_sum
from .modes import mode as mode_of

#: the shape of the placeholder an op returns for an output that was not requested
NOT_REQUESTED_SHAPE = (0,)


def not_requested(t: Tensor) -> Tensor:
    """The placeholder an op returns for an output that was not requested."""
    return t.new_empty(NOT_REQUESTED_SHAPE)


#: the ops a Composed instance serves with its methods of the same name
COMPOSED_OPS = ("masked_linear", "masked_linear_l0", "masked_linear_backward", "masked_conv",
                "masked_conv_l0", "masked_conv_backward")


class Composed:
    """Linear and convolution from the subclass's mask pass pair:

    ``mask_weight(weight, logits, beta, mode, noise)`` → W_eff = θ ⊙ m, in θ's
    dtype and layout; ``mask_weight_backward(grad_weff, weight, logits, beta,
    mode, need_weff, need_weight_grad, need_logits_grad, noise)`` →
    (W_eff, ∂θ = G_W ⊙ m, ∂s = G_W ⊙ θ ⊙ β·slope), empty markers for what
    was not asked; ``noise`` is a sampled mode's key, else None."""

    def mask_weight(self, weight, logits, beta, mode, noise=None) -> Tensor:
        raise NotImplementedError

    def mask_weight_backward(self, grad_weff, weight, logits, beta, mode, need_weff,
                             need_weight_grad, need_logits_grad, noise=None):
        raise NotImplementedError

    # -- shared: the part of backward that turns G_W into (W_eff, ∂θ, ∂s) ----
    def _weight_side(self, grad_w: Tensor | None, weight: Tensor, logits: Tensor, beta: Tensor,
                     mode: str, noise, need_x: bool, need_weight: bool, need_logits: bool):
        """(W_eff or None, ∂θ, ∂s) with empty markers for what was not asked."""
        need_logits = need_logits and mode_of(mode).trains_logits
        if grad_w is None or not (need_weight or need_logits):
            weff = self.mask_weight(weight, logits, beta, mode, noise) if need_x else None
            return weff, not_requested(weight), not_requested(logits)
        weff, gw, gs = self.mask_weight_backward(grad_w, weight, logits, beta, mode, need_x,
                                                 need_weight, need_logits, noise)
        return (weff if need_x else None), gw, gs

    # -- linear ---------------------------------------------------------------
    # The methods below have their op's signature (csrc/ops/schemas.cpp), so
    # an instance's bound methods are the ops' kernels.
    def masked_linear(self, x: Tensor, weight: Tensor, logits: Tensor, bias: Tensor | None,
                      beta: Tensor, mode: str, noise=None) -> Tensor:
        weff = self.mask_weight(weight, logits, beta, mode, noise)
        return torch.nn.functional.linear(x, weff, bias)

    def masked_linear_l0(self, x, weight, logits, bias, beta, mode, noise=None):
        """(y, the L0 penalty): here a separate pass over the logits."""
        return (self.masked_linear(x, weight, logits, bias, beta, mode, noise),
                penalty_sum(logits, beta, mode))

    def masked_linear_backward(self, grad: Tensor, x: Tensor, weight: Tensor, logits: Tensor,
                               beta: Tensor, mode: str, needs: Sequence[bool], noise=None,
                               grad_l0: Optional[Tensor] = None):
        """(∂x, ∂θ, ∂s, ∂b); ``grad_l0`` (the backward of a *_l0 op) adds the
        L0 penalty's gradient grad_l0·∂p/∂s to ∂s."""
        need_x, need_w, need_s, need_b = needs
        n_out, n_in = weight.shape
        g2 = grad.reshape(-1, n_out)
        x2 = x.reshape(-1, n_in)
        grad_w = None
        if need_w or (need_s and mode_of(mode).trains_logits):
            # Produce G_W in the weight's own layout so the mask pass reads it
            # without a transpose copy (GPT-2's Conv1D weight is a transposed view).
            if weight.dim() == 2 and weight.stride(0) == 1 and weight.stride(1) != 1:
                grad_w = (x2.t() @ g2).t()
            else:
                grad_w = g2.t() @ x2
        weff, gw, gs = self._weight_side(grad_w, weight, logits, beta, mode, noise, need_x,
                                         need_w, need_s)
        gx = (g2 @ weff).reshape(x.shape) if need_x else not_requested(x)
        gb = g2.sum(0) if need_b else not_requested(grad)
        return gx, gw, add_penalty_grad(gs, logits, beta, mode, grad_l0), gb

    # -- convolution (any spatial rank torch.convolution supports) -----------
    def masked_conv(self, x: Tensor, weight: Tensor, logits: Tensor, bias: Tensor | None,
                    beta: Tensor, mode: str, stride, padding, dilation, groups: int,
                    noise=None) -> Tensor:
        weff = self.mask_weight(weight, logits, beta, mode, noise)
        zeros = [0] * (weight.dim() - 2)
        return torch.convolution(x, weff, bias, stride, padding, dilation, False, zeros, groups)

    def masked_conv_l0(self, x, weight, logits, bias, beta, mode, stride, padding, dilation,
                       groups, noise=None):
        """(out, the L0 penalty): here a separate pass over the logits."""
        return (self.masked_conv(x, weight, logits, bias, beta, mode, stride, padding, dilation,
                                 groups, noise), penalty_sum(logits, beta, mode))

    def masked_conv_backward(self, grad: Tensor, x: Tensor, weight: Tensor, logits: Tensor,
                             beta: Tensor, mode: str, stride, padding, dilation, groups: int,
                             needs: Sequence[bool], noise=None,
                             grad_l0: Optional[Tensor] = None):
        """(∂x, ∂θ, ∂s, ∂b) of the convolution; ``grad_l0`` as masked_linear_backward's."""
        need_x, need_w, need_s, need_b = needs
        zeros = [0] * (weight.dim() - 2)
        bias_sizes = [weight.shape[0]]

        def conv_grads(w: Tensor, mask):
            return torch.ops.aten.convolution_backward(
                grad, x, w, bias_sizes, stride, padding, dilation, False, zeros, groups, mask)

        want_grad_w = need_w or (need_s and mode_of(mode).trains_logits)
        grad_w, gb = None, not_requested(grad)
        if want_grad_w or need_b:
            # ∂W and ∂b do not read the weight's values, so θ stands in for W_eff.
            _, grad_w, gb_ = conv_grads(weight, [False, want_grad_w, need_b])
            gb = gb_ if need_b else gb
            grad_w = grad_w if want_grad_w else None
        weff, gw, gs = self._weight_side(grad_w, weight, logits, beta, mode, noise, need_x,
                                         need_w, need_s)
        gx = conv_grads(weff, [True, False, False])[0] if need_x else not_requested(x)
        return gx, gw, add_penalty_grad(gs, logits, beta, mode, grad_l0), gb
