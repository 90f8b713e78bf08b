"""Drop-in masked layers.  Each holds the (frozen by default) weight θ of the
layer it replaces, mask logits s (fp32, the trainable mask parameter), the
scale β, the mode and the mask method (nn/mask_state.py, nn/methods.py), and
computes its GEMM with W_eff = θ ⊙ m where

    m = σ(β·s) in mode "soft", 1[s > 0] in "hard", 1 in "none",
        a hard-concrete or Gumbel straight-through sample in "concrete"/"gumbel".

``mode=None`` (the default) follows train()/eval(): the method's training
mask while training, hard in eval — the paper's test-time binary mask.
``method=`` picks the method ("continuous", "hard_concrete", "gumbel", …, or a
MaskMethod with granularity and samples per batch).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import functional as SF
from .base import MaskedWeightMixin
from .mask_state import DEFAULT_MASK_INIT, HeadUnits, MaskInit
from .registry import masks


class _FromModule:
    """``from_module``: a masked layer around an existing module's own
    Parameters (shared, not copied) and state."""

    @classmethod
    def from_module(cls, module: nn.Module, init: MaskInit = DEFAULT_MASK_INIT,
                    beta: Optional[float] = None, mode: Optional[str] = None,
                    freeze_weight: bool = True, method=None, heads: Optional[HeadUnits] = None):
        """Wrap ``module``'s weight and bias (shared Parameters, not copies);
        ``heads`` (heads.head_units) lays out head-level logits."""
        return cls._wrapping(module, init, beta, mode, freeze_weight, method, heads)


@masks(nn.Linear)
class MaskedLinear(_FromModule, MaskedWeightMixin, nn.Linear):
    """nn.Linear with a continuous-sparsification weight mask."""

    _plain = nn.Linear
    _unit_axis = 0
    _input_axis = 1

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 init: MaskInit = DEFAULT_MASK_INIT, beta: Optional[float] = None,
                 mode: Optional[str] = None, freeze_weight: bool = True, method=None,
                 device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._setup_mask(init, beta, mode, freeze_weight, method)

    def forward(self, x: Tensor) -> Tensor:
        mode = self._deterministic_weight_mode()
        if mode is not None:  # the common case, kept short: a small layer is mostly fixed cost
            weight, logits, bias, beta = self._operands()
            if self._fuses_penalty(mode, logits):
                y, penalty = SF.linear_kernel_l0(x, weight, logits, bias, beta, mode)
                self._keep_penalty(penalty, logits)
                return y
            return SF.linear_kernel(x, weight, logits, bias, beta, mode)
        return self._masked_output(
            x, self.weight, self.logits, self.bias,
            lambda x, w, s, b, mode, noise, with_penalty: SF.linear_kernel(
                x, w, s, b, self.beta, mode, noise, with_penalty),
            F.linear)

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, {self._mask_repr()}"


class _MaskedConvNd(_FromModule, MaskedWeightMixin):
    """Shared forward/conversion of MaskedConv1d/2d/3d."""

    _unit_axis = 0
    _output_unit_dim = 1

    def forward(self, x: Tensor) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0

        def op(x, w, s, b, mode, noise, with_penalty=False):
            return SF.masked_conv(x, w, s, self.beta, b, self.stride, padding, self.dilation,
                                  self.groups, mode, noise, with_penalty=with_penalty)

        def gemm(x, w):
            conv = (F.conv1d, F.conv2d, F.conv3d)[w.dim() - 3]
            return conv(x, w, None, self.stride, padding, self.dilation, self.groups)

        return self._masked_output(x, self.weight, self.logits, self.bias, op, gemm)

    def extra_repr(self) -> str:
        return f"{self._plain.extra_repr(self)}, {self._mask_repr()}"


def _conv_class(plain: type, name: str) -> type:
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", *, init: MaskInit = DEFAULT_MASK_INIT,
                 beta: Optional[float] = None, mode: Optional[str] = None,
                 freeze_weight: bool = True, method=None, device=None, dtype=None):
        plain.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                       groups, bias, padding_mode, device=device, dtype=dtype)
        self._setup_mask(init, beta, mode, freeze_weight, method)

    doc = f"nn.{plain.__name__} with a continuous-sparsification weight mask."
    return masks(plain)(type(name, (_MaskedConvNd, plain),
                {"__init__": __init__, "__doc__": doc, "_plain": plain, "forward": _MaskedConvNd.forward,
                 "extra_repr": _MaskedConvNd.extra_repr, "__module__": __name__}))


MaskedConv1d = _conv_class(nn.Conv1d, "MaskedConv1d")
MaskedConv2d = _conv_class(nn.Conv2d, "MaskedConv2d")
MaskedConv3d = _conv_class(nn.Conv3d, "MaskedConv3d")


@masks("transformers.pytorch_utils.Conv1D")
class MaskedGPT2Conv1D(_FromModule, MaskedWeightMixin, nn.Module):
    """transformers' GPT-2 ``Conv1D`` (y = x·W + b with W stored in × out) with a
    weight mask.  The masked GEMM runs on transposed views of W and s, so no
    weight-sized copy is made."""

    _unit_axis = 1  # the weight is stored in × out
    _input_axis = 0

    def __init__(self, nf: int, nx: int, *, init: MaskInit = DEFAULT_MASK_INIT,
                 beta: Optional[float] = None, mode: Optional[str] = None,
                 freeze_weight: bool = True, method=None, device=None, dtype=None):
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.empty(nx, nf, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(nf, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=0.02)
        self._setup_mask(init, beta, mode, freeze_weight, method)

    @classmethod
    def _plain_class(cls) -> type:
        from transformers.pytorch_utils import Conv1D

        return Conv1D

    def forward(self, x: Tensor) -> Tensor:
        mode = self._deterministic_weight_mode()
        if mode is not None:  # the common case, kept short
            weight, logits, bias, beta = self._operands()
            if self._fuses_penalty(mode, logits):
                y, penalty = SF.linear_kernel_l0(x, weight.t(), logits.t(), bias, beta, mode)
                self._keep_penalty(penalty, logits)
                return y
            return SF.linear_kernel(x, weight.t(), logits.t(), bias, beta, mode)
        return self._masked_output(
            x, self.weight, self.logits, self.bias,
            lambda x, w, s, b, mode, noise, with_penalty: SF.linear_kernel(
                x, w.t(), s.t(), b, self.beta, mode, noise, with_penalty),
            lambda x, w: x @ w)

    def extra_repr(self) -> str:
        return f"nx={self.nx}, nf={self.nf}, {self._mask_repr()}"
