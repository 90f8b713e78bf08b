"""The mask state every masked layer shares, and how it behaves like ordinary
module state.

A masked layer has one or more masked weights θ (``masked_weights`` names each
weight attribute with its logits attribute), fp32 mask logits s per weight,
one scale β and one mode:

* ``beta`` is a 0-d buffer (dtype of the logits), so it is saved by
  ``state_dict``/safetensors/``save_pretrained`` and annealing it under
  ``torch.compile`` changes a tensor, not a guarded Python value (no
  recompile).  ``layer.beta = 5.0`` writes into the buffer.
* the mode is ``None`` (soft while training, hard in eval — the paper's test
  mask), or pinned to "soft", "hard" or "none".  It is kept in an int8 buffer
  ``mask_mode`` for saving and mirrored in a Python attribute that forward
  reads (reading a GPU buffer would synchronise).
* casting the module to fp16/bf16 (``.half()``, ``.to(torch.bfloat16)``)
  casts θ but keeps the logits and β in full precision: the mask math is fp32.
* ``mask_ran`` records that the layer's mask was applied since the last reset,
  so a model that bypasses the layer (reads ``.weight`` directly) is detected
  (nn/coverage.py).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from .. import functional as SF
from .. import sharded
from .._validation import MODE_CODES, check_beta, check_mode

# Paper, Appendix A: "initialize mask weights as -0.1 for all our experiments".
DEFAULT_MASK_INIT = -0.1

MaskInit = Union[float, Tensor, Callable[[Tensor], None]]

_AUTO_MODE = -1  # mask_mode value for "follow train()/eval()"
_MODE_NAMES = {code: name for name, code in MODE_CODES.items()}
_FULL_PRECISION = (torch.float32, torch.float64)


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
    """Mask state and queries shared by every masked layer (see module doc)."""

    #: (weight attribute, logits attribute) for each masked weight of the layer
    masked_weights: tuple[tuple[str, str], ...] = (("weight", "logits"),)

    # ------------------------------------------------------------ set-up
    def _setup_mask(self, init: MaskInit, beta: float, mode: Optional[str],
                    freeze_weight: bool) -> None:
        device = None
        for weight_name, logits_name in self.masked_weights:
            weight = getattr(self, weight_name)
            setattr(self, logits_name, nn.Parameter(_initial_logits(weight, init)))
            if freeze_weight:
                weight.requires_grad_(False)
            device = weight.device
        nn.Module.register_buffer(self, "beta", torch.tensor(check_beta(beta), dtype=torch.float32,
                                                             device=device))
        nn.Module.register_buffer(self, "mask_mode", torch.tensor(_AUTO_MODE, dtype=torch.int8,
                                                                  device=device))
        self.mode = mode
        self.__dict__["mask_ran"] = False

    @classmethod
    def _wrapping(cls, module: nn.Module, init: MaskInit, beta: float, mode: Optional[str],
                  freeze_weight: bool):
        """A layer of this class that takes over ``module``'s state: the same
        Parameter objects (shared, not copied), buffers, submodules, attributes
        and hooks; the original module is left as it was."""
        layer = cls.__new__(cls)
        for key, value in module.__dict__.items():
            # Containers are copied so registering the logits leaves ``module`` alone.
            layer.__dict__[key] = copy.copy(value) if isinstance(value, (dict, set)) else value
        layer._setup_mask(init, beta, mode, freeze_weight)
        return layer

    @torch.no_grad()
    def reset_logits(self, init: MaskInit = DEFAULT_MASK_INIT) -> None:
        """Set every logit back to ``init`` in place (a number, a tensor shaped
        like the weight, or a callable), e.g. to search several L0 penalties
        with one masked copy of a model."""
        for weight_name, logits_name in self.masked_weights:
            logits = getattr(self, logits_name)
            if (isinstance(init, (int, float)) and not isinstance(init, bool)
                    and math.isfinite(init)):
                logits.fill_(float(init))  # in place: no weight-sized temporary
            else:
                logits.copy_(_initial_logits(getattr(self, weight_name), init))

    # ------------------------------------------------------------ β and mode
    def __setattr__(self, name, value):
        if name == "beta" and "beta" in self.__dict__.get("_buffers", {}):
            self.set_beta(value)
        else:
            super().__setattr__(name, value)

    @torch.no_grad()
    def set_beta(self, value: Union[float, Tensor]) -> None:
        """Write β into the buffer (in place: compiled graphs see the new value)."""
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"beta must be a scalar, got shape {tuple(value.shape)}")
            if value.device.type == "cpu":
                check_beta(value)
            self._buffers["beta"].copy_(value.reshape(()))
        else:
            self._buffers["beta"].fill_(check_beta(value))

    @property
    def mode(self) -> str:
        """The mode forward uses now: the pinned one, else soft/hard by training."""
        if self._mode is not None:
            return self._mode
        return "soft" if self.training else "hard"

    @mode.setter
    def mode(self, value: Optional[str]) -> None:
        self.__dict__["_mode"] = None if value is None else check_mode(value)
        with torch.no_grad():
            self._buffers["mask_mode"].fill_(_AUTO_MODE if value is None else MODE_CODES[value])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        code = int(self._buffers["mask_mode"])
        if code != _AUTO_MODE and code not in _MODE_NAMES:
            raise ValueError(f"{prefix}mask_mode holds {code}, not a mask mode code")
        self.__dict__["_mode"] = None if code == _AUTO_MODE else _MODE_NAMES[code]

    # ------------------------------------------------------------ casting
    def _apply(self, fn, recurse=True):
        """Casts to fp16/bf16 leave the logits and β in full precision (they
        are restored from the originals, not rounded); device moves and casts
        to fp32/fp64 apply to them as to every other tensor."""
        names = [logits for _, logits in self.masked_weights]
        before = {name: getattr(self, name).data for name in names}
        before["beta"] = self._buffers["beta"]
        result = super()._apply(fn, recurse)
        for name, original in before.items():
            now = getattr(self, name)
            if now.dtype not in _FULL_PRECISION and original.dtype in _FULL_PRECISION:
                now.data = original.to(device=now.device)
                if isinstance(now, nn.Parameter) and now.grad is not None:
                    now.grad = now.grad.to(original.dtype)
        return result

    # ------------------------------------------------------------ queries
    def _note_mask_ran(self) -> None:
        if not torch.compiler.is_compiling():
            self.__dict__["mask_ran"] = True

    def masked_parameters(self) -> dict[str, tuple[Tensor, Tensor]]:
        """{weight attribute: (θ, logits)} for each masked weight."""
        return {w: (getattr(self, w), getattr(self, s)) for w, s in self.masked_weights}

    def _logits(self) -> list[Tensor]:
        return [getattr(self, s) for _, s in self.masked_weights]

    def l0(self) -> Tensor:
        """Σσ(β·s) over the layer's logits: the expected number of kept weights
        (over all shards of sharded logits; see subind_fast/sharded.py)."""
        terms = [sharded.shard_sum(SF.l0(sharded.local(s), self.beta), s)
                 for s in self._logits()]
        return terms[0] if len(terms) == 1 else torch.stack(terms).sum()

    def hard_masks(self) -> dict[str, Tensor]:
        """{weight attribute: 1[s > 0] as a bool tensor shaped like θ}."""
        return {w: sharded.whole(s.detach()) > 0 for w, (_, s) in self.masked_parameters().items()}

    def hard_mask(self) -> Tensor:
        """The binary mask 1[s > 0] of the layer's (single) masked weight."""
        if len(self.masked_weights) != 1:
            raise ValueError(f"{type(self).__name__} masks {len(self.masked_weights)} weights; "
                             "use hard_masks()")
        return next(iter(self.hard_masks().values()))

    def density(self) -> float:
        """Fraction of the layer's masked weights the hard mask keeps."""
        kept = sum(sharded.count_positive(s) for s in self._logits())
        return kept / max(1, sum(s.numel() for s in self._logits()))

    def _mask_weight(self, weight_name: str) -> Tensor:
        """W_eff of one masked weight in the current mode (marks the mask as run)."""
        self._note_mask_ran()
        weight, logits = self.masked_parameters()[weight_name]
        return SF.mask_weight(weight, logits, self.beta, self.mode)

    def masked_weight(self) -> Tensor:
        """W_eff = θ ⊙ m of the layer's (single) masked weight in the current mode."""
        return self._mask_weight(self.masked_weights[0][0])

    def _dense_weight(self, weight_name: str = "weight") -> Tensor:
        weight, logits = self.masked_parameters()[weight_name]
        weight = sharded.whole(weight.detach())
        return (weight * (sharded.whole(logits.detach()) > 0).to(weight.dtype)).clone()

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
        out.__class__ = next(c for c in type(self).__mro__ if issubclass(c, MaskedWeightMixin)
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
        plain = self._plain_class()
        if any(sharded.is_sharded(p) for p in self.parameters(recurse=False)):
            out = self._unsharded_shell()
        else:
            out = copy.deepcopy(self)
        for child_name, child in list(out._modules.items()):
            if isinstance(child, MaskedWeightMixin):
                out._modules[child_name] = child.to_module()
        for weight_name, logits_name in self.masked_weights:
            weight = getattr(self, weight_name)
            out._parameters[weight_name] = nn.Parameter(self._dense_weight(weight_name),
                                                        weight.requires_grad)
            del out._parameters[logits_name]
        for buffer in ("beta", "mask_mode"):
            del out._buffers[buffer]
        for attribute in ("mask_ran", "_mode"):
            out.__dict__.pop(attribute, None)
        out.__class__ = plain
        return out

    def _mask_repr(self) -> str:
        return f"beta={float(self.beta):g}, mode={self._mode or 'auto'}"
