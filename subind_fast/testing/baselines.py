"""The eager composite: continuous sparsification as users write it in eager
PyTorch (NeuroSurgeon's way), W_eff = θ ⊙ σ(β·s) built at full size by plain
ops each forward, with autograd keeping σ(β·s) and W_eff for backward.  What
our fused layers replace; the benchmarks, the memory tests and `subind
plan-memory` measure against this one implementation."""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn.mask_state import DEFAULT_MASK_INIT


class SoftMask(nn.Module):
    """A parametrization W_eff = θ ⊙ σ(β·s), cast back to θ's dtype; s fp32
    logits shaped like θ, β a buffer."""

    def __init__(self, weight: Tensor, init: float = DEFAULT_MASK_INIT, beta: float = 1.0):
        super().__init__()
        self.logits = nn.Parameter(torch.full(weight.shape, init, dtype=torch.float32,
                                              device=weight.device))
        self.register_buffer("beta", torch.tensor(float(beta), device=weight.device))

    def forward(self, weight: Tensor) -> Tensor:
        return (weight * torch.sigmoid(self.beta * self.logits)).to(weight.dtype)


def eager_composite(model: nn.Module, include: Optional[Sequence[str]] = None,
                    exclude: Optional[Sequence[str]] = None, init: float = DEFAULT_MASK_INIT,
                    beta: float = 1.0) -> nn.Module:
    """``model`` in place with a :class:`SoftMask` on every weight mask_model
    would mask (the same ``include``/``exclude``; a bare layer: its own
    weights); every other parameter frozen.  Returns ``model``."""
    from torch.nn.utils import parametrize

    from ..nn.model import mask_model, masked_layers
    from ..nn.registry import masked_class_for

    if masked_class_for(type(model)) is not None:  # a bare layer
        chosen = {"": masked_class_for(type(model))}
    else:
        probe = copy.deepcopy(model)
        mask_model(probe, include=include, exclude=exclude, check_coverage="off")
        chosen = {name: type(layer) for name, layer in masked_layers(probe).items()}
    for p in model.parameters():
        p.requires_grad_(False)
    for name, module in model.named_modules():
        if name in chosen:
            for weight_name in _weight_names(chosen[name], module):
                parametrize.register_parametrization(
                    module, weight_name, SoftMask(getattr(module, weight_name), init, beta))
    return model


def soft_masks(model: nn.Module) -> list[SoftMask]:
    """The SoftMask parametrizations of an eager-composite model."""
    return [m for m in model.modules() if isinstance(m, SoftMask)]


def _weight_names(masked_class: type, module: nn.Module) -> list[str]:
    names = masked_class.masked_weights
    if isinstance(names, property):  # MultiheadAttention: packed or separate projections
        names = names.fget(module)
    return [weight for weight, _ in names]
