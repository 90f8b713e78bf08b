"""Detect masked layers that did not run during a forward of the model.

A model can bypass a masked layer by computing with its weight directly
(timm attention blocks calling ``F.linear(x, self.qkv.weight, …)``, a
subclass whose forward ignores ``super().forward``, a fused inference path).
The layer's logits then get no gradient and the subnetwork silently means
nothing.  ``mask_model`` installs a check on the model's forward: every masked
layer notes when its mask is applied (``mask_ran``); after the forward, any
that did not is named in a :class:`MaskCoverageError`.

Policies: ``"first"`` (default) checks the first eager forward and then
removes the hooks; ``"always"`` checks every eager forward (for models that
branch); ``"off"`` installs nothing.  Forwards traced by torch.compile are
not checked (the flags are Python side effects).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from .base import MaskedWeightMixin

POLICIES = ("first", "always", "off")
_HANDLES = "_subind_coverage_hooks"


class MaskCoverageError(RuntimeError):
    """Masked layers of a model did not run during its forward."""


def _masked(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedWeightMixin)}


def unused_masked_layers(model: nn.Module) -> list[str]:
    """Names of masked layers whose mask was not applied since the last reset."""
    return [f"{name} ({type(m).__name__})" for name, m in _masked(model).items()
            if not m.mask_ran]


def reset(model: nn.Module) -> None:
    for m in _masked(model).values():
        m.__dict__["mask_ran"] = False


def remove_check(model: nn.Module) -> None:
    for handle in model.__dict__.pop(_HANDLES, ()):
        handle.remove()


def _before_forward(module, args):
    if not torch.compiler.is_compiling():
        reset(module)


def _after_forward(module, args, output, policy: str):
    # Acts on the module it is called for, so a deep copy of the model checks itself.
    if torch.compiler.is_compiling():
        return
    missing = unused_masked_layers(module)
    if policy == "first":
        remove_check(module)
    if missing:
        raise MaskCoverageError(
            f"{len(missing)} masked layer(s) did not run during the forward: "
            f"{missing[:8]}{' …' if len(missing) > 8 else ''}.  Either this forward does not "
            "use them (a branch not taken, a head that is not called: exclude them, or pass "
            "check_coverage='off' or 'always' if later forwards use them), or their parent "
            "module computes with their weight directly (e.g. F.linear(x, self.qkv.weight)), "
            "so their mask would be ignored: mask_model fixes the cases it knows (timm "
            "EVA/BEiT/SwinV2 attention, nn.TransformerEncoderLayer); exclude any other.")


def install_check(model: nn.Module, policy: str = "first") -> None:
    if policy not in POLICIES:
        raise ValueError(f"check_coverage must be one of {POLICIES}, got {policy!r}")
    remove_check(model)
    if policy == "off":
        return
    # Module-level functions (not closures) so the model still pickles.
    model.__dict__[_HANDLES] = (
        model.register_forward_pre_hook(_before_forward),
        model.register_forward_hook(functools.partial(_after_forward, policy=policy)))
