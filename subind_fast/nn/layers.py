"""Drop-in masked layers.  Each holds the (frozen by default) weight θ of the
layer it replaces, mask logits s (fp32, the trainable mask parameter) and the
scale β, and computes its GEMM with W_eff = θ ⊙ m where

    m = σ(β·s) in mode "soft", 1[s > 0] in "hard", 1 in "none".

``mode=None`` (the default) follows train()/eval(): soft while training, hard
in eval — the paper's test-time binary mask.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as SF
from .._validation import check_beta, check_mode

# Paper, Appendix A: "initialize mask weights as -0.1 for all our experiments".
DEFAULT_MASK_INIT = -0.1

MaskInit = Union[float, Tensor, Callable[[Tensor], None]]


def _initial_logits(weight: Tensor, init: MaskInit) -> Tensor:
    logits = torch.empty(weight.shape, dtype=torch.float32, device=weight.device)
    if callable(init) and not isinstance(init, Tensor):
        with torch.no_grad():
            init(logits)
    elif isinstance(init, Tensor):
        if init.shape != weight.shape:
            raise ValueError(f"init tensor shape {tuple(init.shape)} must equal weight shape "
                             f"{tuple(weight.shape)}")
        logits.copy_(init)
    elif isinstance(init, (int, float)) and not isinstance(init, bool) and math.isfinite(init):
        logits.fill_(float(init))
    else:
        raise TypeError(f"init must be a finite number, a tensor or a callable, got {init!r}")
    return logits


class MaskedWeightMixin:
    """Mask state and queries shared by every masked layer."""

    weight: nn.Parameter
    logits: nn.Parameter

    def _setup_mask(self, init: MaskInit, beta: float, mode: Optional[str],
                    freeze_weight: bool) -> None:
        self.logits = nn.Parameter(_initial_logits(self.weight, init))
        self.beta = beta
        self.mode = mode
        if freeze_weight:
            self.weight.requires_grad_(False)

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = check_beta(value)

    @property
    def mode(self) -> str:
        """The mode forward uses now: the explicit one, else soft/hard by training."""
        if self._mode is not None:
            return self._mode
        return "soft" if self.training else "hard"

    @mode.setter
    def mode(self, value: Optional[str]) -> None:
        self._mode = None if value is None else check_mode(value)

    def l0(self) -> Tensor:
        """Σσ(β·s): the expected number of kept weights (differentiable in s)."""
        return SF.l0(self.logits, self.beta)

    def hard_mask(self) -> Tensor:
        """The binary mask 1[s > 0] as a bool tensor shaped like the weight."""
        return self.logits.detach() > 0

    def density(self) -> float:
        """Fraction of weights the hard mask keeps."""
        return self.hard_mask().float().mean().item()

    def masked_weight(self) -> Tensor:
        """W_eff in the current mode."""
        return SF.mask_weight(self.weight, self.logits, self.beta, self.mode)

    @classmethod
    def _wrapping(cls, module: nn.Module, init: MaskInit, beta: float, mode: Optional[str],
                  freeze_weight: bool, **attributes):
        """A layer of this class around ``module``'s own weight and bias
        Parameters (shared, not copied) with the given extra attributes."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        for name, value in attributes.items():
            setattr(layer, name, value)
        layer.weight, layer.bias = module.weight, module.bias
        layer.train(module.training)
        layer._setup_mask(init, beta, mode, freeze_weight)
        return layer

    def _dense_weight(self) -> Tensor:
        return (self.weight.detach() * self.hard_mask().to(self.weight.dtype)).clone()

    def get_extra_state(self):
        return {"beta": self._beta, "mode": self._mode}

    def set_extra_state(self, state) -> None:
        self.beta = state["beta"]
        self.mode = state["mode"]

    def _mask_repr(self) -> str:
        return f"beta={self._beta:g}, mode={self._mode or 'auto'}"


def _copied_bias(bias: Optional[Tensor]) -> Optional[Tensor]:
    return None if bias is None else nn.Parameter(bias.detach().clone(), bias.requires_grad)


class MaskedLinear(MaskedWeightMixin, nn.Linear):
    """nn.Linear with a continuous-sparsification weight mask."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 init: MaskInit = DEFAULT_MASK_INIT, beta: float = 1.0,
                 mode: Optional[str] = None, freeze_weight: bool = True, device=None, dtype=None):
        nn.Linear.__init__(self, in_features, out_features, bias, device=device, dtype=dtype)
        self._setup_mask(init, beta, mode, freeze_weight)

    @classmethod
    def from_module(cls, module: nn.Linear, init: MaskInit = DEFAULT_MASK_INIT, beta: float = 1.0,
                    mode: Optional[str] = None, freeze_weight: bool = True) -> "MaskedLinear":
        """Wrap ``module``'s weight and bias (shared Parameters, not copies)."""
        return cls._wrapping(module, init, beta, mode, freeze_weight,
                             in_features=module.in_features, out_features=module.out_features)

    def to_module(self) -> nn.Linear:
        """A plain nn.Linear whose weight is θ ⊙ 1[s > 0]."""
        out = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        out.weight = nn.Parameter(self._dense_weight(), self.weight.requires_grad)
        out.bias = _copied_bias(self.bias)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return SF.masked_linear(x, self.weight, self.logits, self.beta, self.bias, self.mode)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._mask_repr()}"


class _MaskedConvNd(MaskedWeightMixin):
    """Shared forward/conversion of MaskedConv1d/2d/3d."""

    _plain: type

    @classmethod
    def from_module(cls, module: nn.modules.conv._ConvNd, init: MaskInit = DEFAULT_MASK_INIT,
                    beta: float = 1.0, mode: Optional[str] = None, freeze_weight: bool = True):
        """Wrap ``module``'s weight and bias (shared Parameters, not copies)."""
        geometry = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                    "transposed", "output_padding", "groups", "padding_mode",
                    "_reversed_padding_repeated_twice")
        return cls._wrapping(module, init, beta, mode, freeze_weight,
                             **{name: getattr(module, name) for name in geometry})

    def to_module(self):
        out = self._plain(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                          self.padding, self.dilation, self.groups, self.bias is not None,
                          self.padding_mode, device=self.weight.device, dtype=self.weight.dtype)
        out.weight = nn.Parameter(self._dense_weight(), self.weight.requires_grad)
        out.bias = _copied_bias(self.bias)
        return out

    def forward(self, x: Tensor) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return SF.masked_conv(x, self.weight, self.logits, self.beta, self.bias, self.stride,
                              padding, self.dilation, self.groups, self.mode)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._mask_repr()}"


def _conv_class(plain: type, name: str) -> type:
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", *, init: MaskInit = DEFAULT_MASK_INIT,
                 beta: float = 1.0, mode: Optional[str] = None, freeze_weight: bool = True,
                 device=None, dtype=None):
        plain.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                       groups, bias, padding_mode, device=device, dtype=dtype)
        self._setup_mask(init, beta, mode, freeze_weight)

    doc = f"nn.{plain.__name__} with a continuous-sparsification weight mask."
    return type(name, (_MaskedConvNd, plain),
                {"__init__": __init__, "__doc__": doc, "_plain": plain, "forward": _MaskedConvNd.forward,
                 "extra_repr": _MaskedConvNd.extra_repr, "__module__": __name__})


MaskedConv1d = _conv_class(nn.Conv1d, "MaskedConv1d")
MaskedConv2d = _conv_class(nn.Conv2d, "MaskedConv2d")
MaskedConv3d = _conv_class(nn.Conv3d, "MaskedConv3d")


class MaskedGPT2Conv1D(MaskedWeightMixin, nn.Module):
    """transformers' GPT-2 ``Conv1D`` (y = x·W + b with W stored in × out) with a
    weight mask.  The masked GEMM runs on transposed views of W and s, so no
    weight-sized copy is made."""

    def __init__(self, nf: int, nx: int, *, init: MaskInit = DEFAULT_MASK_INIT, beta: float = 1.0,
                 mode: Optional[str] = None, freeze_weight: bool = True, device=None, dtype=None):
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.empty(nx, nf, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(nf, device=device, dtype=dtype))
        nn.init.normal_(self.weight, std=0.02)
        self._setup_mask(init, beta, mode, freeze_weight)

    @classmethod
    def from_module(cls, module: nn.Module, init: MaskInit = DEFAULT_MASK_INIT, beta: float = 1.0,
                    mode: Optional[str] = None, freeze_weight: bool = True) -> "MaskedGPT2Conv1D":
        """Wrap ``module``'s weight and bias (shared Parameters, not copies)."""
        return cls._wrapping(module, init, beta, mode, freeze_weight, nf=module.nf,
                             nx=module.weight.shape[0])

    def to_module(self):
        from transformers.pytorch_utils import Conv1D

        out = Conv1D(self.nf, self.nx).to(device=self.weight.device, dtype=self.weight.dtype)
        out.weight = nn.Parameter(self._dense_weight(), self.weight.requires_grad)
        out.bias = _copied_bias(self.bias)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return SF.masked_linear(x, self.weight.t(), self.logits.t(), self.beta, self.bias, self.mode)

    def extra_repr(self) -> str:
        return f"nx={self.nx}, nf={self.nf}, {self._mask_repr()}"


MASKED_LAYER_TYPES = (MaskedLinear, _MaskedConvNd, MaskedGPT2Conv1D)
