"""Subnetworks chosen without training a mask (issue 11's selection methods;
the trained mask methods are the masked layers):

* ``magnitude`` — the fraction ``density`` of weights with the largest |θ|, per
  layer or over the whole model (by absolute value: ranking signed values, as
  NeuroSurgeon's magnitude pruning does, keeps large positive weights and drops
  large negative ones);
* ``lottery_ticket`` — sparse fine-tuning's selection (Ansell et al.): the
  weights that moved most, by |θ_finetuned − θ_pretrained|.

Both select among the weights ``mask_model`` would mask (linear, convolution,
attention projections, GPT-2 Conv1D; ``include``/``exclude`` globs on module
names as there) and keep exactly ⌊density · n⌉ entries of each scope (ties go
to the earlier entry).  The result is a :class:`Subnetwork` like a discovered
one: it transfers, ablates and compares the same way, and
``mask_model(model, subnetwork=…)`` installs it on the masked layers.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..naming import parameter_names
from ..nn.model import select_modules
from ..subnetwork import Subnetwork

SCOPES = ("layer", "global")
METHODS = ("magnitude", "lottery_ticket")


def maskable_weights(model: nn.Module, include: Optional[Sequence[str]] = None,
                     exclude: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
    """{canonical parameter name: weight} of the weights mask_model would mask
    with these patterns (the same selection, errors included)."""
    table = parameter_names(model)
    modules, _, selected = select_modules(model, include, exclude)
    chosen = {}
    for key in selected:
        # matrix-shaped weights, with MultiheadAttention's out_proj inside it
        for name, param in modules[key].named_parameters():
            if "weight" in name.rpartition(".")[2] and param.dim() >= 2:
                chosen[table.name_of(param)] = param
    return chosen


def _check(density: float, scope: str) -> None:
    if not (isinstance(density, (int, float)) and 0.0 <= density <= 1.0):
        raise ValueError(f"density must be a number in [0, 1], got {density!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def _top(scores: dict[str, Tensor], density: float, scope: str) -> Subnetwork:
    """Keep the highest scores: round(density · n) per parameter or over all."""
    masks = {}
    if scope == "layer":
        for name, score in scores.items():
            flat = score.detach().reshape(-1).double().cpu()
            keep = int(round(density * flat.numel()))
            mask = torch.zeros(flat.numel(), dtype=torch.bool)
            if keep:
                # stable sort: equal scores keep their order, so ties go to earlier entries
                mask[torch.sort(flat, descending=True, stable=True).indices[:keep]] = True
            masks[name] = mask.view(score.shape)
        return Subnetwork.from_masks(masks)
    flat = torch.cat([s.detach().reshape(-1).double().cpu() for s in scores.values()])
    keep = int(round(density * flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep:
        mask[torch.sort(flat, descending=True, stable=True).indices[:keep]] = True
    start = 0
    for name, score in scores.items():
        masks[name] = mask[start:start + score.numel()].view(score.shape)
        start += score.numel()
    return Subnetwork.from_masks(masks)


def magnitude(model: nn.Module, density: float, scope: str = "layer",
              include: Optional[Sequence[str]] = None,
              exclude: Optional[Sequence[str]] = None) -> Subnetwork:
    """The ``density`` fraction of the maskable weights with the largest |θ|."""
    _check(density, scope)
    weights = maskable_weights(model, include, exclude)
    subnetwork = _top({n: w.abs() for n, w in weights.items()}, density, scope)
    subnetwork.metadata.update(method="magnitude", density=density, scope=scope)
    return subnetwork


def lottery_ticket(finetuned: nn.Module, pretrained: nn.Module, density: float,
                   scope: str = "global", include: Optional[Sequence[str]] = None,
                   exclude: Optional[Sequence[str]] = None) -> Subnetwork:
    """The ``density`` fraction of the maskable weights that moved most in
    fine-tuning, by |θ_finetuned − θ_pretrained| (the two models must have the
    same parameters and shapes)."""
    _check(density, scope)
    tuned = maskable_weights(finetuned, include, exclude)
    before = parameter_names(pretrained)
    scores = {}
    for name, weight in tuned.items():
        original = before.params.get(before.resolve(name) or "")
        if original is None or original.shape != weight.shape:
            raise ValueError(f"the pretrained model has no parameter {name} of shape "
                             f"{tuple(weight.shape)}")
        scores[name] = (weight.detach().double() - original.detach().double().to(
            weight.device)).abs()
    subnetwork = _top(scores, density, scope)
    subnetwork.metadata.update(method="lottery_ticket", density=density, scope=scope)
    return subnetwork


def select(method: str, model: nn.Module, density: float, scope: Optional[str] = None,
           pretrained: Optional[nn.Module] = None, include: Optional[Sequence[str]] = None,
           exclude: Optional[Sequence[str]] = None) -> Subnetwork:
    """The subnetwork selection ``method`` (METHODS) picks in ``model``; its
    default scope is the method's (magnitude: per layer, lottery ticket:
    global), and the lottery ticket needs ``pretrained`` (before fine-tuning)."""
    if method not in METHODS:
        raise ValueError(f"selection method must be one of {METHODS}, got {method!r}")
    if method == "magnitude":
        if pretrained is not None:
            raise ValueError("magnitude selection reads one model's weights: pretrained= is "
                             "for lottery_ticket")
        return magnitude(model, density, scope or "layer", include, exclude)
    if pretrained is None:
        raise ValueError("lottery_ticket needs pretrained= (the model before fine-tuning)")
    return lottery_ticket(model, pretrained, density, scope or "global", include, exclude)
