"""Whole-model helpers: put masks on every supported layer, anneal β, collect
the L0 penalty, and take the masks off again."""
from __future__ import annotations

import fnmatch
import sys
from typing import Iterable, Optional, Union

import torch
from torch import Tensor, nn

from .layers import (DEFAULT_MASK_INIT, MASKED_LAYER_TYPES, MaskedConv1d, MaskedConv2d,
                     MaskedConv3d, MaskedGPT2Conv1D, MaskedLinear, MaskInit)

Patterns = Optional[Union[str, Iterable[str]]]


def _supported_types() -> dict[type, type]:
    """Plain module type → masked replacement.  Exact types only: a subclass
    (e.g. nn.MultiheadAttention's out_proj) may bypass its own forward."""
    table = {nn.Linear: MaskedLinear, nn.Conv1d: MaskedConv1d, nn.Conv2d: MaskedConv2d,
             nn.Conv3d: MaskedConv3d}
    if "transformers" in sys.modules:  # only a transformers model can hold a GPT-2 Conv1D
        from transformers.pytorch_utils import Conv1D
        table[Conv1D] = MaskedGPT2Conv1D
    return table


def _patterns(value: Patterns, name: str) -> Optional[list[str]]:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{name} must be a glob pattern or a list of them, got {value!r}")
    return values


def _set_child(model: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, child)


def mask_model(model: nn.Module, include: Patterns = None, exclude: Patterns = None,
               init: MaskInit = DEFAULT_MASK_INIT, beta: float = 1.0, freeze_base: bool = True,
               mode: Optional[str] = None) -> dict[str, nn.Module]:
    """Replace every supported layer whose name matches ``include`` (glob
    patterns on module names; all when None) and no ``exclude`` pattern by its
    masked version, in place.  Weights are shared, not copied.  With
    ``freeze_base`` every parameter except the mask logits stops requiring
    grad.  Returns {name: masked layer}.  A pattern that matches no supported
    layer is an error (it is almost always a typo)."""
    include_p, exclude_p = _patterns(include, "include"), _patterns(exclude, "exclude")
    table = _supported_types()
    candidates = [(name, m) for name, m in model.named_modules()
                  if name and type(m) in table and not isinstance(m, MASKED_LAYER_TYPES)]
    names = [name for name, _ in candidates]
    for label, pats in (("include", include_p), ("exclude", exclude_p)):
        for pat in pats or []:
            if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                raise ValueError(f"{label} pattern {pat!r} matches no maskable layer; "
                                 f"maskable layers are e.g. {names[:6]}")

    def chosen(name: str) -> bool:
        if include_p is not None and not any(fnmatch.fnmatchcase(name, p) for p in include_p):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in exclude_p or [])

    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    replaced = {}
    for name, module in candidates:
        if chosen(name):
            layer = table[type(module)].from_module(module, init=init, beta=beta, mode=mode,
                                                    freeze_weight=freeze_base)
            _set_child(model, name, layer)
            replaced[name] = layer
    if not replaced:
        raise ValueError("mask_model: no layer was selected (check include/exclude)")
    return replaced


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: layer} for every masked layer in ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MASKED_LAYER_TYPES)}


def _require_masked(model: nn.Module) -> dict[str, nn.Module]:
    layers = masked_layers(model)
    if not layers:
        raise ValueError("the model has no masked layers (call mask_model first)")
    return layers


def set_beta(model: nn.Module, beta: float) -> None:
    """Set the scale β of every masked layer."""
    for layer in _require_masked(model).values():
        layer.beta = beta


def set_mode(model: nn.Module, mode: Optional[str]) -> None:
    """Force every masked layer's mode ("soft", "hard", "none"), or None to follow train/eval."""
    for layer in _require_masked(model).values():
        layer.mode = mode


def l0_penalty(model: nn.Module) -> Tensor:
    """Σ over masked layers of Σσ(β·s): the expected number of kept weights."""
    return torch.stack([layer.l0() for layer in _require_masked(model).values()]).sum()


def unmask_model(model: nn.Module) -> nn.Module:
    """Replace every masked layer by its plain module with θ ⊙ 1[s > 0] baked in."""
    for name, layer in _require_masked(model).items():
        _set_child(model, name, layer.to_module())
    return model
