"""A masked layer back to the plain module it replaced, with θ ⊙ 1[s > 0]
baked into each masked weight (``to_module``), including from FSDP2 shards:
the shards are gathered whole into a copy without FSDP's state and hooks."""
from __future__ import annotations

import copy

from torch import Tensor, nn

from .. import sharded
from ..units import expand_units
from .mask_state import MASK_BUFFERS, MaskState
from .masked_forward import ABLATION_ATTRIBUTE


class PlainExport:
    """The export half of a masked layer (mixed into MaskedWeightMixin)."""

    def _dense_weight(self, weight_name: str = "weight") -> Tensor:
        weight, logits = self.masked_parameters()[weight_name]
        weight = sharded.whole(weight.detach())
        kept = expand_units(sharded.whole(logits.detach()) > 0, weight.shape)
        return (weight * kept.to(weight.dtype)).clone()

    def _unsharded_shell(self) -> nn.Module:
        """A copy of this layer's attributes with every parameter gathered whole
        and without FSDP's state and hooks (an FSDP module refuses deepcopy;
        its hooks would gather shards that the copy does not have).  User
        hooks are dropped with them."""
        out = object.__new__(nn.Module)
        for key, value in self.__dict__.items():
            if key.startswith("__composable_api_state_key") or key.startswith("_fsdp") \
                    or key == "_is_fsdp_managed_module":
                continue
            if "hooks" in key and isinstance(value, dict):
                value = type(value)()
            out.__dict__[key] = copy.copy(value) if isinstance(value, (dict, set)) else value
        for name, param in self._parameters.items():
            if param is not None:
                out._parameters[name] = nn.Parameter(sharded.whole(param.detach()).clone(),
                                                     param.requires_grad)
        out._buffers = {name: None if b is None else b.clone() for name, b in self._buffers.items()}
        # FSDP made this layer's class a subclass of its own; the copy is the masked class.
        out.__class__ = next(c for c in type(self).__mro__ if issubclass(c, MaskState)
                             and not sharded.is_fsdp_class(c))
        return out

    #: the module type this layer replaces (to_module's result type)
    _plain: type = nn.Module

    @classmethod
    def _plain_class(cls) -> type:
        return cls._plain

    def to_module(self) -> nn.Module:
        """A plain module of the type this layer replaced (e.g. nn.Linear, or the
        user's Linear subclass) with θ ⊙ 1[s > 0] baked into each masked
        weight: an independent copy; this layer is unchanged."""
        if ABLATION_ATTRIBUTE in self.__dict__:  # its removed weights' term is no plain layer's
            raise ValueError(f"{type(self).__name__} ablates removed weights to "
                             f"{self.__dict__['ablation']!r}; sf.nn.set_ablation(model, 'zero') "
                             "before exporting the plain model")
        plain = self._plain_class()
        if any(sharded.is_sharded(p) for p in self.parameters(recurse=False)):
            out = self._unsharded_shell()
        else:
            out = copy.deepcopy(self)
        for child_name, child in list(out._modules.items()):
            if isinstance(child, MaskState):
                out._modules[child_name] = child.to_module()
        for weight_name, logits_name in self.masked_weights:
            weight = getattr(self, weight_name)
            out._parameters[weight_name] = nn.Parameter(self._dense_weight(weight_name),
                                                        weight.requires_grad)
            del out._parameters[logits_name]
        for buffer in MASK_BUFFERS:
            del out._buffers[buffer]
        for attribute in ("mask_ran", "_mode", "mask_method"):
            out.__dict__.pop(attribute, None)
        out.__class__ = plain
        return out
