"""The interface of the Python kernel backends (triton, reference), and the
composition of the mask family with ATen's GEMMs they share.

A backend declares the device types it serves (``devices``; ``None`` = any)
and the op families it implements (``families``).  Each family is a fixed set
of methods (``FAMILY_METHODS``); a class that declares a family must define
all of them, which is checked when the class is created, so a backend never
discovers a missing method at call time and nothing is patched on afterwards.

Families and their math (m = σ(β·s) | 1[s>0] | 1):

    mask:    mask_weight            W_eff = θ ⊙ m
             mask_weight_backward   from G_W = ∂L/∂W_eff: W_eff (recomputed),
                                    ∂θ = G_W ⊙ m, ∂s = G_W ⊙ θ ⊙ β·m(1−m) (soft only)
    linear:  linear_forward/backward   y = x·W_effᵀ + b and its gradients
    conv:    conv_forward/backward     the same with the convolution as the GEMM
    l0:      sigmoid_sum(_backward)    L0 = Σσ(βs), ∂L0/∂s = β·m(1−m)
    sampled: sampled_mask_weight(_backward)   the mask family for the sampled
                                    modes (hard-concrete, Gumbel straight-through):
                                    m and its slope from the logistic noise of a
                                    key (subind_fast/noise.py), regenerated in backward
    optim:   adamw_step, sgd_step      fused frozen-mask optimizer updates (in place)

β arrives as a one-element tensor (on the logits' device or the CPU), never a
Python float, so annealing it neither recompiles a graph nor syncs a GPU.

:class:`ComposedBackend` turns the mask family into linear and convolution
around ATen's GEMMs:

    forward:   W_eff = mask_weight(θ, s);  y = x·W_effᵀ + b   (W_eff freed)
    backward:  G_W = Gᵀ·x;  (W_eff, ∂θ, ∂s) = mask_weight_backward(G_W)   (one pass)
               ∂x = G·W_eff;  ∂b = Σ_rows G

Nothing weight-sized is kept between forward and backward.  A backend with
fused GEMMs (Triton) overrides the linear methods.
"""
from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch
from torch import Tensor

from .._validation import SAMPLED_MODES, TRAINING_MODES

#: the shape of the placeholder an op returns for an output that was not
#: requested (a custom op cannot return None); the C++ kernels use the same
#: (csrc/include/subind/mask_driver.h: empty_marker)
NOT_REQUESTED_SHAPE = (0,)

FAMILY_METHODS: dict[str, tuple[str, ...]] = {
    "mask": ("mask_weight", "mask_weight_backward"),
    "linear": ("linear_forward", "linear_backward"),
    "conv": ("conv_forward", "conv_backward"),
    "l0": ("sigmoid_sum", "sigmoid_sum_backward"),
    "sampled": ("sampled_mask_weight", "sampled_mask_weight_backward"),
    "optim": ("adamw_step", "sgd_step"),
}
FAMILIES = tuple(FAMILY_METHODS)


class UnsupportedOpError(NotImplementedError):
    """A backend was asked for an op family it does not declare."""


def not_requested(t: Tensor) -> Tensor:
    """The placeholder an op returns for an output that was not requested."""
    return t.new_empty(NOT_REQUESTED_SHAPE)


def _abstract(family: str):
    """Marks an interface method: calling it on a backend that does not
    declare ``family`` raises UnsupportedOpError naming both."""
    def wrap(method):
        def unsupported(self, *args, **kwargs):
            raise UnsupportedOpError(
                f"the {self.name} backend does not implement the {family} op family "
                f"({method.__name__}); it serves {sorted(self.families)}")

        unsupported.__name__ = method.__name__
        unsupported.__doc__ = method.__doc__
        unsupported._subind_abstract = True
        return unsupported

    return wrap


class Backend:
    """The interface.  Subclasses set ``name``, ``devices`` and ``families``
    and define every method of each declared family."""

    name: ClassVar[str] = "abstract"
    devices: ClassVar[Optional[frozenset]] = frozenset()
    families: ClassVar[frozenset] = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        unknown = set(cls.families) - set(FAMILIES)
        if unknown:
            raise TypeError(f"{cls.__name__} declares unknown op families {sorted(unknown)}")
        missing = [m for f in cls.families for m in FAMILY_METHODS[f]
                   if getattr(getattr(cls, m), "_subind_abstract", False)]
        if missing:
            raise TypeError(f"{cls.__name__} declares families {sorted(cls.families)} but does "
                            f"not define {missing}")

    def serves(self, device_type: str, family: str) -> bool:
        return family in self.families and (self.devices is None or device_type in self.devices)

    # -- mask ------------------------------------------------------------------
    @_abstract("mask")
    def mask_weight(self, weight: Tensor, logits: Tensor, beta: Tensor, mode: str) -> Tensor:
        """W_eff = θ ⊙ m(s), in θ's dtype and layout."""

    @_abstract("mask")
    def mask_weight_backward(self, grad_weff: Tensor, weight: Tensor, logits: Tensor,
                             beta: Tensor, mode: str, need_weff: bool, need_weight_grad: bool,
                             need_logits_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(W_eff, ∂θ, ∂s) from ∂L/∂W_eff, empty markers for what was not asked."""

    # -- sampled (the mask family for the sampled modes) ------------------------
    @_abstract("sampled")
    def sampled_mask_weight(self, weight: Tensor, logits: Tensor, beta: Tensor, mode: str,
                            noise: Tensor) -> Tensor:
        """W_eff = θ ⊙ m(s, L(noise)), m a hard-concrete or Gumbel straight-through sample."""

    @_abstract("sampled")
    def sampled_mask_weight_backward(self, grad_weff: Tensor, weight: Tensor, logits: Tensor,
                                     beta: Tensor, mode: str, noise: Tensor, need_weff: bool,
                                     need_weight_grad: bool, need_logits_grad: bool
                                     ) -> tuple[Tensor, Tensor, Tensor]:
        """(W_eff, ∂θ, ∂s = G_W ⊙ θ ⊙ β·slope) with the noise regenerated."""

    # -- linear / conv (``noise``: the key of a sampled mode, else None) ---------
    @_abstract("linear")
    def linear_forward(self, x, weight, logits, bias, beta, mode, noise=None) -> Tensor:
        """y = x·W_effᵀ + b over the last dim of x."""

    @_abstract("linear")
    def linear_backward(self, grad, x, weight, logits, beta, mode, needs, noise=None):
        """(∂x, ∂θ, ∂s, ∂b) for the gradients ``needs`` asks for."""

    @_abstract("conv")
    def conv_forward(self, x, weight, logits, bias, beta, mode, stride, padding, dilation,
                     groups, noise=None) -> Tensor:
        """N-d convolution with W_eff."""

    @_abstract("conv")
    def conv_backward(self, grad, x, weight, logits, beta, mode, stride, padding, dilation,
                      groups, needs, noise=None):
        """(∂x, ∂θ, ∂s, ∂b) of the convolution."""

    # -- l0 --------------------------------------------------------------------
    @_abstract("l0")
    def sigmoid_sum(self, logits: Tensor, beta: Tensor) -> Tensor:
        """Σσ(β·s) as a 0-d tensor of the logits' dtype."""

    @_abstract("l0")
    def sigmoid_sum_backward(self, grad: Tensor, logits: Tensor, beta: Tensor) -> Tensor:
        """grad·β·m(1−m), shaped like the logits."""

    # -- optim (in place; see subind_fast/optim.py) -----------------------------
    @_abstract("optim")
    def adamw_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr,
                   beta1, beta2, eps, weight_decay, step_size, inv_sqrt_bias2) -> None:
        """One torch.optim.AdamW step on the free elements; frozen ones untouched."""

    @_abstract("optim")
    def sgd_step(self, param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening,
                 weight_decay, nesterov, first_step) -> None:
        """One torch.optim.SGD step on the free elements; frozen ones untouched."""


class ComposedBackend(Backend):
    """Linear and convolution composed from the mask family (or, for the
    sampled modes, the sampled family) and ATen's GEMMs."""

    # -- the element-wise pass of the mode: deterministic or sampled -----------
    def _mask(self, weight, logits, beta, mode, noise):
        if mode in SAMPLED_MODES:
            return self.sampled_mask_weight(weight, logits, beta, mode, noise)
        return self.mask_weight(weight, logits, beta, mode)

    def _mask_backward(self, grad_w, weight, logits, beta, mode, noise, *needs):
        if mode in SAMPLED_MODES:
            return self.sampled_mask_weight_backward(grad_w, weight, logits, beta, mode, noise,
                                                     *needs)
        return self.mask_weight_backward(grad_w, weight, logits, beta, mode, *needs)

    # -- shared: the part of backward that turns G_W into (W_eff, ∂θ, ∂s) ----
    def _weight_side(self, grad_w: Tensor | None, weight: Tensor, logits: Tensor, beta: Tensor,
                     mode: str, noise, need_x: bool, need_weight: bool, need_logits: bool):
        """(W_eff or None, ∂θ, ∂s) with empty markers for what was not asked."""
        need_logits = need_logits and mode in TRAINING_MODES
        if grad_w is None or not (need_weight or need_logits):
            weff = self._mask(weight, logits, beta, mode, noise) if need_x else None
            return weff, not_requested(weight), not_requested(logits)
        weff, gw, gs = self._mask_backward(grad_w, weight, logits, beta, mode, noise,
                                           need_x, need_weight, need_logits)
        return (weff if need_x else None), gw, gs

    # -- linear ---------------------------------------------------------------
    def linear_forward(self, x: Tensor, weight: Tensor, logits: Tensor, bias: Tensor | None,
                       beta: Tensor, mode: str, noise=None) -> Tensor:
        weff = self._mask(weight, logits, beta, mode, noise)
        return torch.nn.functional.linear(x, weff, bias)

    def linear_backward(self, grad: Tensor, x: Tensor, weight: Tensor, logits: Tensor,
                        beta: Tensor, mode: str, needs: Sequence[bool], noise=None):
        need_x, need_w, need_s, need_b = needs
        n_out, n_in = weight.shape
        g2 = grad.reshape(-1, n_out)
        x2 = x.reshape(-1, n_in)
        grad_w = None
        if need_w or (need_s and mode in TRAINING_MODES):
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
        return gx, gw, gs, gb

    # -- convolution (any spatial rank torch.convolution supports) -----------
    def conv_forward(self, x: Tensor, weight: Tensor, logits: Tensor, bias: Tensor | None,
                     beta: Tensor, mode: str, stride, padding, dilation, groups: int,
                     noise=None) -> Tensor:
        weff = self._mask(weight, logits, beta, mode, noise)
        zeros = [0] * (weight.dim() - 2)
        return torch.convolution(x, weff, bias, stride, padding, dilation, False, zeros, groups)

    def conv_backward(self, grad: Tensor, x: Tensor, weight: Tensor, logits: Tensor,
                      beta: Tensor, mode: str, stride, padding, dilation, groups: int,
                      needs: Sequence[bool], noise=None):
        need_x, need_w, need_s, need_b = needs
        zeros = [0] * (weight.dim() - 2)
        bias_sizes = [weight.shape[0]]

        def conv_grads(w: Tensor, mask):
            return torch.ops.aten.convolution_backward(
                grad, x, w, bias_sizes, stride, padding, dilation, False, zeros, groups, mask)

        want_grad_w = need_w or (need_s and mode in TRAINING_MODES)
        grad_w, gb = None, not_requested(grad)
        if want_grad_w or need_b:
            # ∂W and ∂b do not read the weight's values, so θ stands in for W_eff.
            _, grad_w, gb_ = conv_grads(weight, [False, want_grad_w, need_b])
            gb = gb_ if need_b else gb
            grad_w = grad_w if want_grad_w else None
        weff, gw, gs = self._weight_side(grad_w, weight, logits, beta, mode, noise, need_x,
                                         need_w, need_s)
        gx = conv_grads(weff, [True, False, False])[0] if need_x else not_requested(x)
        return gx, gw, gs, gb


class NoiseKeyedMaskBackend(ComposedBackend):
    """A backend whose mask family takes the sampled modes' noise key as an
    optional last argument: its sampled family is the same two methods."""

    def sampled_mask_weight(self, weight, logits, beta, mode, noise):
        return self.mask_weight(weight, logits, beta, mode, noise)

    def sampled_mask_weight_backward(self, grad_weff, weight, logits, beta, mode, noise,
                                     need_weff, need_weight_grad, need_logits_grad):
        return self.mask_weight_backward(grad_weff, weight, logits, beta, mode, need_weff,
                                         need_weight_grad, need_logits_grad, noise)
