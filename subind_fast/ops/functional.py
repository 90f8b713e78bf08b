"""Stateless masked ops: the weight mask fused into linear and convolution.
m = σ(β·s) ("soft", continuous sparsification), 1[s>0] ("hard") or 1
("none"), or a sampled training mask — "concrete" (hard-concrete) and
"gumbel" (Gumbel-sigmoid, straight-through), which take ``noise``, an int64
key [seed, stream] naming the draw (ops/noise.py); W_eff = θ ⊙ m (ops/modes.py
lists the modes).  Gradients flow to the input, the logits s (the training
modes soft, concrete, gumbel), the bias, and θ when it requires grad
(csrc/ops/schemas.cpp has the formulas).  Each function validates its
arguments, then calls the fused op (``torch.ops.subind``) or, with the eager
kernels or on a device without ours, the same math in plain PyTorch ops
(ops/choice.py decides).

β is a positive number or a one-element tensor (a layer passes its buffer).
``with_penalty=True`` (a training mode) returns (out, Σp(s)) instead: the L0
penalty of the logits — σ(βs) soft, P(m ≠ 0) concrete, s gumbel, summed —
from the op's own mask pass, its gradient added to ∂s in the op's backward
pass (the *_l0 ops), so the logits are read once per pass, not twice.
Under ``torch.autocast`` masked_linear / masked_conv* compute in the autocast
dtype exactly where F.linear / F.conv* would (x, θ and the bias are cast);
the logits and the mask math stay fp32."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from .checks import beta_tensor, check_input, check_masked_weight
from .choice import kernels_for
from .modes import TRAINING_MODE_NAMES, mode as mode_of
from .noise import check_key

IntOrTuple = Union[int, Sequence[int]]


def _checked(weight, logits, mode, noise) -> None:
    check_masked_weight(weight, logits, mode)
    check_key(noise, mode, logits)


def mask_weight(weight: Tensor, logits: Tensor, beta: float, mode: str = "soft",
                noise: Optional[Tensor] = None) -> Tensor:
    """W_eff = weight ⊙ m(logits); differentiable in weight and logits."""
    _checked(weight, logits, mode, noise)
    return kernels_for(weight).mask_weight(weight, logits, beta_tensor(beta, logits), mode, noise)


def l0(logits: Tensor, beta: float) -> Tensor:
    """Expected mask size Σσ(β·s) (the continuous L0 penalty), gradient β·m(1−m)."""
    if not isinstance(logits, torch.Tensor) or logits.dtype not in (torch.float32, torch.float64):
        raise TypeError("logits must be a float32 or float64 tensor")
    return kernels_for(logits).sigmoid_sum(logits, beta_tensor(beta, logits))


def _check_penalty_mode(mode: str, with_penalty: bool) -> None:
    if with_penalty and not mode_of(mode).trains_logits:
        raise ValueError(f"with_penalty needs a training mode {TRAINING_MODE_NAMES}, got mode "
                         f"{mode!r}")


def masked_linear(x: Tensor, weight: Tensor, logits: Tensor, beta: float,
                  bias: Optional[Tensor] = None, mode: str = "soft",
                  noise: Optional[Tensor] = None, *, with_penalty: bool = False):
    """y = x · (weight ⊙ m(logits))ᵀ + bias for x of shape (..., in_features);
    (y, penalty) with ``with_penalty``."""
    _checked(weight, logits, mode, noise)
    _check_penalty_mode(mode, with_penalty)
    if weight.dim() != 2:
        raise ValueError(f"masked_linear: weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    check_input(x, weight, bias, -1, weight.shape[1], "masked_linear")
    return linear_kernel(x, weight, logits, bias, beta_tensor(beta, logits), mode, noise,
                         with_penalty)


def linear_kernel(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor],
                  beta: Tensor, mode: str, noise: Optional[Tensor] = None,
                  with_penalty: bool = False):
    """masked_linear without the Python checks, for the layers: their θ, s
    and β were checked when set, and the op checks x and the bias against θ
    (naming them) at a fraction of the cost — a small layer's call is
    dominated by fixed costs."""
    if with_penalty:
        return kernels_for(x).masked_linear_l0(x, weight, logits, bias, beta, mode, noise)
    return kernels_for(x).masked_linear(x, weight, logits, bias, beta, mode, noise)


def linear_kernel_l0(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor],
                     beta: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """linear_kernel's (y, penalty) in a deterministic training mode (the layers' fast path)."""
    return kernels_for(x).masked_linear_l0(x, weight, logits, bias, beta, mode)


def _tuple(value: IntOrTuple, n: int, name: str) -> list[int]:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n or not all(isinstance(v, int) for v in values):
        raise ValueError(f"{name} must be an int or {n} ints, got {value!r}")
    return values


def _padding(padding, kernel: Sequence[int], dilation: Sequence[int]) -> list[int]:
    if padding == "valid":
        return [0] * len(kernel)
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel, dilation)]
        if any(t % 2 for t in total):
            raise ValueError("padding='same' needs an odd effective kernel size here; "
                             "pad the input explicitly for even kernels")
        return [t // 2 for t in total]
    values = _tuple(padding, len(kernel), "padding")
    if any(v < 0 for v in values):
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return values


def masked_conv(x: Tensor, weight: Tensor, logits: Tensor, beta: float,
                bias: Optional[Tensor] = None, stride: IntOrTuple = 1,
                padding: Union[str, IntOrTuple] = 0, dilation: IntOrTuple = 1, groups: int = 1,
                mode: str = "soft", noise: Optional[Tensor] = None, *,
                with_penalty: bool = False):
    """N-d convolution (N = weight.dim() − 2) with W_eff = weight ⊙ m(logits);
    (out, penalty) with ``with_penalty``."""
    _checked(weight, logits, mode, noise)
    _check_penalty_mode(mode, with_penalty)
    nd = weight.dim() - 2
    if nd < 1:
        raise ValueError(f"masked_conv: weight must be (out, in/groups, *kernel), got {tuple(weight.shape)}")
    if not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups={groups!r} must be a positive int dividing out_channels={weight.shape[0]}")
    op = f"masked_conv{nd}d"
    if not isinstance(x, torch.Tensor) or x.dim() not in (nd + 1, nd + 2):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{op}: input must have {nd + 1} (unbatched) or {nd + 2} dims, got {shape}")
    check_input(x, weight, bias, -nd - 1, weight.shape[1] * groups, op)
    stride = _tuple(stride, nd, "stride")
    dilation = _tuple(dilation, nd, "dilation")
    if any(v < 1 for v in stride + dilation):
        raise ValueError(f"stride {stride} and dilation {dilation} must be >= 1")
    padding = _padding(padding, weight.shape[2:], dilation)
    unbatched = x.dim() == nd + 1
    kernels = kernels_for(x)
    conv = kernels.masked_conv_l0 if with_penalty else kernels.masked_conv
    out = conv(x.unsqueeze(0) if unbatched else x, weight, logits, bias,
               beta_tensor(beta, logits), mode, stride, padding, dilation, groups, noise)
    if with_penalty:
        out, penalty = out
        return (out.squeeze(0) if unbatched else out), penalty
    return out.squeeze(0) if unbatched else out


def _conv_of_rank(nd: int):
    def conv(x: Tensor, weight: Tensor, logits: Tensor, beta: float, bias: Optional[Tensor] = None,
             stride: IntOrTuple = 1, padding: Union[str, IntOrTuple] = 0,
             dilation: IntOrTuple = 1, groups: int = 1, mode: str = "soft",
             noise: Optional[Tensor] = None, *, with_penalty: bool = False):
        if isinstance(weight, torch.Tensor) and weight.dim() != nd + 2:
            raise ValueError(f"masked_conv{nd}d: weight must have {nd + 2} dims, got {tuple(weight.shape)}")
        return masked_conv(x, weight, logits, beta, bias, stride, padding, dilation, groups, mode,
                           noise, with_penalty=with_penalty)

    conv.__name__ = f"masked_conv{nd}d"
    conv.__doc__ = f"{nd}-d convolution with W_eff = weight ⊙ m(logits); see masked_conv."
    return conv


masked_conv1d = _conv_of_rank(1)
masked_conv2d = _conv_of_rank(2)
masked_conv3d = _conv_of_rank(3)

__all__ = ["mask_weight", "l0", "masked_linear", "masked_conv", "masked_conv1d",
           "masked_conv2d", "masked_conv3d"]
