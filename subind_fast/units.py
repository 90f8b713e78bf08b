"""Unit-level masks (one logit per neuron, channel or attention head) and the
weights they cover.

A unit-level logits tensor has the weight's number of axes; every axis has
size 1 except the unit axis, which has one entry per unit.  A unit is a run
of ``size // units`` consecutive rows or columns along that axis (one row or
channel for a neuron, head_dim of them for a head), so the logits' shape alone
says which weights each logit covers."""
from __future__ import annotations

import torch
from torch import Tensor


def check_unit_shape(unit_shape, weight_shape, what: str = "logits") -> None:
    """Raise unless ``unit_shape`` divides ``weight_shape`` axis by axis."""
    unit_shape, weight_shape = torch.Size(unit_shape), torch.Size(weight_shape)
    if len(unit_shape) != len(weight_shape) or any(
            u < 1 or n % u for u, n in zip(unit_shape, weight_shape)):
        raise ValueError(f"{what} of shape {tuple(unit_shape)} do not divide the weight's shape "
                         f"{tuple(weight_shape)} into equal units")


def expand_units(values: Tensor, shape) -> Tensor:
    """``values`` (unit-shaped) repeated over the weights of each unit, to ``shape``."""
    shape = torch.Size(shape)
    check_unit_shape(values.shape, shape)
    for axis, (units, size) in enumerate(zip(values.shape, shape)):
        if 1 < units < size:
            values = values.repeat_interleave(size // units, dim=axis)
    return values.expand(shape)


def unit_vector(values: Tensor, size: int) -> Tensor:
    """A unit-shaped tensor along one axis as a vector over that axis's ``size``
    rows or columns (each unit's value repeated over its run)."""
    flat = values.reshape(-1)
    return flat if flat.numel() == size else flat.repeat_interleave(size // flat.numel())


def collapse_units(mask: Tensor, unit_shape, name: str = "mask") -> Tensor:
    """The unit-shaped bool mask whose expansion is ``mask``; a ValueError
    naming ``name`` when some unit is kept only in part."""
    unit_shape = torch.Size(unit_shape)
    check_unit_shape(unit_shape, mask.shape, f"{name}'s units")
    blocks = []
    for units, size in zip(unit_shape, mask.shape):
        blocks += [units, size // units]
    grouped = mask.reshape(blocks)
    inner = tuple(range(1, len(blocks), 2))
    kept_any, kept_all = grouped.any(dim=inner), grouped.all(dim=inner)
    if not torch.equal(kept_any, kept_all):
        partial = int((kept_any & ~kept_all).sum())
        raise ValueError(f"{name}: {partial} unit(s) of shape {tuple(unit_shape)} are kept "
                         "only in part; a unit-level mask keeps whole units")
    return kept_all
