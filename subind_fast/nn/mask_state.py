"""The mask state every masked layer shares, how it behaves like ordinary
module state, and the queries on it (the forward is nn/masked_forward.py, the
export to a plain module nn/plain_export.py; nn/base.py joins them).

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
* ``mask_method`` (nn/methods.py) says how the mask is trained
  (continuous sparsification by default, hard-concrete, Gumbel-sigmoid)
  and at which granularity: per weight, per output unit (neuron; a
  convolution's output channel) or per attention head (units.py: the logits
  have size 1 on every axis but the unit axis, and cover runs of the weight's
  rows or columns; ``mask_unit_axes`` names that axis per weight).
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from .. import sharded
from ..units import expand_units
from ..ops.checks import check_beta
from ..ops.modes import MODES, mode as mode_of
from .masked_forward import ABLATION_ATTRIBUTE, ABLATION_CODES, ABLATION_STATE, PENALTY_WANTED
from .methods import DEFAULT_BETA, MaskMethod, as_method, expected_kept, l0_penalty

# Paper, Appendix A: "initialize mask weights as -0.1 for all our experiments".
DEFAULT_MASK_INIT = -0.1

MaskInit = Union[float, Tensor, Callable[[Tensor], None]]
#: {id(weight): (axis, units)}: where head-level logits split a weight (heads.head_units)
HeadUnits = Mapping[int, tuple[int, int]]

_AUTO_MODE = -1  # mask_mode value for "follow train()/eval()"
#: the buffers every masked layer holds besides its logits (saved with it)
MASK_BUFFERS = ("beta", "mask_mode", "mask_method_name")
_MODE_NAMES = {m.code: m.name for m in MODES}
_FULL_PRECISION = (torch.float32, torch.float64)


def _initial_logits(weight: Tensor, init: MaskInit, shape=None) -> Tensor:
    """Logits of ``shape`` (default: the weight's) filled from ``init``."""
    shape = weight.shape if shape is None else torch.Size(shape)
    logits = torch.empty(shape, dtype=torch.float32, device=weight.device)
    if callable(init) and not isinstance(init, Tensor):
        with torch.no_grad():
            init(logits)
    elif isinstance(init, Tensor):
        if init.shape != shape:
            raise ValueError(f"init tensor shape {tuple(init.shape)} must equal the logits' "
                             f"shape {tuple(shape)}")
        logits.copy_(init)
    elif isinstance(init, (int, float)) and not isinstance(init, bool) and math.isfinite(init):
        logits.fill_(float(init))
    else:
        raise TypeError(f"init must be a finite number, a tensor or a callable, got {init!r}")
    if not isinstance(init, (int, float)) and not logits.is_meta \
            and not bool(torch.isfinite(logits).all()):
        raise ValueError("init gave NaN or infinite mask logits; they must be finite")
    return logits


class MaskState:
    """Mask state and queries shared by every masked layer (see module doc)."""

    #: (weight attribute, logits attribute) for each masked weight of the layer
    masked_weights: tuple[tuple[str, str], ...] = (("weight", "logits"),)
    #: the weight axis that indexes output units (None: no neuron granularity)
    _unit_axis: Optional[int] = None
    #: the weight axis that indexes inputs (head-level masks on an output projection)
    _input_axis: Optional[int] = None
    #: the output axis of those units
    _output_unit_dim: int = -1

    # ------------------------------------------------------------ set-up
    def __prepare_scriptable__(self):
        # torch.jit.script calls this on every submodule before compiling it;
        # TorchScript cannot call the mask's custom autograd functions.
        raise TypeError(f"{type(self).__name__} cannot be compiled by torch.jit.script (deprecated "
                        "in PyTorch, and unable to call the mask's custom autograd ops): use "
                        "torch.compile or torch.export, or sf.unmask_model(model) first to script "
                        "the plain model with the hard mask baked in")

    def _setup_mask(self, init: MaskInit, beta: Optional[float], mode: Optional[str],
                    freeze_weight: bool, method=None, heads: Optional[HeadUnits] = None) -> None:
        method = as_method(method or "continuous")
        beta = DEFAULT_BETA[method.name] if beta is None else beta
        self.__dict__["mask_method"] = method
        self.__dict__["mask_unit_axes"] = {}
        device = None
        for weight_name, logits_name in self.masked_weights:
            weight = getattr(self, weight_name)
            logits = nn.Parameter(_initial_logits(
                weight, init, self._logits_shape(weight_name, weight, heads)), requires_grad=True)
            setattr(self, logits_name, logits)
            if freeze_weight:
                weight.requires_grad_(False)
            device = weight.device
        nn.Module.register_buffer(self, "beta", torch.tensor(check_beta(beta), dtype=torch.float32,
                                                             device=device))
        nn.Module.register_buffer(self, "mask_mode", torch.tensor(_AUTO_MODE, dtype=torch.int8,
                                                                  device=device))
        # Saved so that a checkpoint reloads with the method and granularity it was trained with.
        nn.Module.register_buffer(self, "mask_method_name", method_tensor(method, device))
        self.mode = mode
        self.__dict__["mask_ran"] = False

    def _logits_shape(self, weight_name: str, weight: Tensor,
                      heads: Optional[HeadUnits]) -> torch.Size:
        """The weight's shape at weight granularity; else 1 on every axis but
        the unit axis (units.py), which holds one logit per output unit
        (neuron; a convolution's output channel) or, at head granularity, one
        per run of rows or columns that ``heads`` (heads.head_units) gives the
        weight — an attention projection's heads; weights without heads fall
        back to output units."""
        granularity = self.mask_method.granularity
        if granularity == "weight":
            return weight.shape
        axis, units = (heads or {}).get(id(weight), (None, None)) if granularity == "head" \
            else (None, None)
        if axis is None:
            if self._unit_axis is None:
                raise ValueError(f"{type(self).__name__} has no {granularity} granularity "
                                 f"for {weight_name}; use granularity='weight'")
            axis, units = self._unit_axis, weight.shape[self._unit_axis]
        if self._unit_axis is not None and axis not in (self._unit_axis, self._input_axis):
            raise ValueError(f"{type(self).__name__}: units along axis {axis} of {weight_name} "
                             "are neither its outputs nor its inputs")
        if weight.shape[axis] % units:
            raise ValueError(f"{type(self).__name__}: {weight_name}'s axis {axis} of size "
                             f"{weight.shape[axis]} does not split into {units} equal units")
        self.mask_unit_axes[weight_name] = axis
        return torch.Size(units if a == axis else 1 for a in range(weight.dim()))

    @classmethod
    def _wrapping(cls, module: nn.Module, init: MaskInit, beta: float, mode: Optional[str],
                  freeze_weight: bool, method=None, heads: Optional[HeadUnits] = None):
        """A layer of this class that takes over ``module``'s state: the same
        Parameter objects (shared, not copied), buffers, submodules, attributes
        and hooks; the original module is left as it was."""
        layer = cls.__new__(cls)
        for key, value in module.__dict__.items():
            # Containers are copied so registering the logits leaves ``module`` alone.
            layer.__dict__[key] = copy.copy(value) if isinstance(value, (dict, set)) else value
        layer._setup_mask(init, beta, mode, freeze_weight, method, heads)
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
                logits.copy_(_initial_logits(getattr(self, weight_name), init, logits.shape))

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
        """The mode forward uses now: the pinned one, else the method's training
        mode (soft, concrete, gumbel; hard for the selection methods) while
        training and hard in eval."""
        if self._mode is not None:
            return self._mode
        return self.mask_method.training_op_mode if self.training else "hard"

    @mode.setter
    def mode(self, value: Optional[str]) -> None:
        spec = None if value is None else mode_of(value)
        self.__dict__["_mode"] = None if spec is None else spec.name
        with torch.no_grad():
            self._buffers["mask_mode"].fill_(_AUTO_MODE if spec is None else spec.code)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        problem = self._ablation_mismatch(state_dict, prefix)
        if problem:  # an error even under strict=False: the output would silently change
            error_msgs.append(problem)
            return
        saved = saved_method(state_dict, prefix, where=prefix)
        if saved is not None:
            mine = self.mask_method
            if (saved.name, saved.granularity, saved.n_samples) != (
                    mine.name, mine.granularity, mine.n_samples):
                raise ValueError(f"{prefix or 'the layer'}: the state was saved with mask method "
                                 f"{saved.as_dict()}, this layer uses {mine.as_dict()}; mask the "
                                 "model with the saved method (sf.nn.masked_from_pretrained reads "
                                 "it)")
            state_dict.pop(prefix + LEGACY_METHOD_KEY, None)  # a file from before the text form
            state_dict[prefix + "mask_method_name"] = self._buffers["mask_method_name"]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if "ablation_input" in self._buffers and prefix + "ablation_input" in state_dict:
            self.__dict__["_means_recorded"] = True
        code = int(self._buffers["mask_mode"])
        if code != _AUTO_MODE and code not in _MODE_NAMES:
            raise ValueError(f"{prefix}mask_mode holds {code}, not a mask mode code")
        self.__dict__["_mode"] = None if code == _AUTO_MODE else _MODE_NAMES[code]

    def _ablation_mismatch(self, state_dict, prefix) -> Optional[str]:
        """Why ``state_dict`` cannot load into this layer's ablation (None: it
        can): a saved ablation (its ``ablation_code``) must be the layer's, and
        a mean or learned one must bring its inputs.  A state without the code
        is a partial one (strict=False) or the plain mask state, which a
        strict load reports as missing keys where the layer ablates."""
        key = prefix + "ablation_code"
        if key not in state_dict:
            return None
        names = {code: name for name, code in ABLATION_CODES.items()}
        code = int(state_dict[key])
        saved = names.get(code, f"code {code}")
        mine = self.__dict__.get(ABLATION_ATTRIBUTE, "zero")
        where = prefix[:-1] or "the layer"
        if saved != mine:
            return (f"{where}: the state was saved with ablation {saved!r}, this layer ablates "
                    f"{mine!r}; call sf.nn.set_ablation(model, {saved!r}) before loading "
                    "(sf.nn.masked_from_pretrained does)")
        if mine in ("mean", "learned") and prefix + "ablation_input" not in state_dict:
            return f"{where}: the state of a {mine!r} ablation lacks its ablation_input"
        return None

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
    def mask_state_names(self) -> list[str]:
        """The layer's own state_dict keys that masking added: logits, MASK_BUFFERS
        and an ablation's state (nn/ablation.py)."""
        return ([logits for _, logits in self.masked_weights] + list(MASK_BUFFERS)
                + [name for name in ABLATION_STATE
                   if name in self._buffers or name in self._parameters])

    def masked_parameters(self) -> dict[str, tuple[Tensor, Tensor]]:
        """{weight attribute: (θ, logits)} for each masked weight."""
        return {w: (getattr(self, w), getattr(self, s)) for w, s in self.masked_weights}

    def _logits(self) -> list[Tensor]:
        return [getattr(self, s) for _, s in self.masked_weights]

    def _per_weight_sum(self, per_logit) -> Tensor:
        """Σ over the layer's masked weights of ``per_logit(method, s, β)``, a
        unit's term counted once per weight of the unit (over all shards of
        sharded logits; see subind_fast/sharded.py)."""
        terms = []
        for weight, s in self.masked_parameters().values():
            term = sharded.shard_sum(per_logit(self.mask_method, sharded.local(s), self.beta), s)
            fan = weight.numel() // s.numel()
            terms.append(term * fan if fan != 1 else term)
        return terms[0] if len(terms) == 1 else torch.stack(terms).sum()

    def l0_penalty(self) -> Tensor:
        """The method's sparsity penalty over the layer's logits (methods.py):
        for continuous sparsification Σσ(β·s), the expected number of kept
        weights.  The penalty the last training forward computed in its mask
        pass when that is still current (nn/masked_forward.py), else a pass
        of its own; from the first call on, training forwards compute it."""
        self.__dict__[PENALTY_WANTED] = True  # later training forwards compute it
        fused = self.forward_penalty()
        return fused if fused is not None else self._per_weight_sum(l0_penalty)

    def expected_kept(self) -> Tensor:
        """The expected number of weights the training mask keeps
        (methods.expected_kept), differentiable in the logits."""
        return self._per_weight_sum(expected_kept)

    def hard_kept(self) -> Tensor:
        """The number of weights the hard mask 1[s > 0] keeps (int64), on the
        logits' device: no host synchronisation (kept_and_total reads it)."""
        return self._per_weight_sum(lambda method, s, beta: (s.detach() > 0).sum())

    def hard_masks(self) -> dict[str, Tensor]:
        """{weight attribute: 1[s > 0] as a bool tensor shaped like θ}."""
        return {w: expand_units(sharded.whole(s.detach()) > 0, weight.shape)
                for w, (weight, s) in self.masked_parameters().items()}

    def hard_mask(self) -> Tensor:
        """The binary mask 1[s > 0] of the layer's (single) masked weight."""
        if len(self.masked_weights) != 1:
            raise ValueError(f"{type(self).__name__} masks {len(self.masked_weights)} weights; "
                             "use hard_masks()")
        return next(iter(self.hard_masks().values()))

    def kept_and_total(self) -> tuple[int, int]:
        """(weights the hard mask keeps, masked weights) over the layer."""
        kept = total = 0
        for weight, s in self.masked_parameters().values():
            kept += sharded.count_positive(s) * (weight.numel() // s.numel())
            total += weight.numel()
        return kept, total

    def density(self) -> float:
        """Fraction of the layer's masked weights the hard mask keeps."""
        kept, total = self.kept_and_total()
        return kept / max(1, total)

    def _mask_repr(self) -> str:
        method = self.mask_method
        extra = "" if method == MaskMethod() else (
            f", method={method.name}" + (f", granularity={method.granularity}"
                                         if method.granularity != "weight" else "")
            + (f", n_samples={method.n_samples}" if method.n_samples > 1 else ""))
        return f"beta={float(self.beta):g}, mode={self._mode or 'auto'}{extra}"


#: the key under which main up to 1ff13e0 saved the method, as positions in
#: these two tuples (of that time: fixed here, whatever METHODS becomes)
LEGACY_METHOD_KEY = "mask_method_code"
_LEGACY_METHODS = ("continuous", "hard_concrete", "gumbel")
_LEGACY_GRANULARITIES = ("weight", "neuron", "head")


def method_tensor(method: MaskMethod, device=None) -> Tensor:
    """The saved form of a mask method: the text "<method> <granularity>
    <n_samples>" as UTF-8 bytes in a uint8 tensor (any checkpoint format
    holds it, and no reordering of a table relabels it)."""
    text = f"{method.name} {method.granularity} {method.n_samples}"
    return torch.tensor(list(text.encode()), dtype=torch.uint8, device=device)


def method_of_tensor(saved: Tensor, where: str = "") -> MaskMethod:
    """The MaskMethod a saved ``mask_method_name`` buffer names."""
    try:
        name, granularity, n_samples = bytes(saved.reshape(-1).tolist()).decode().split(" ")
        return MaskMethod(name, granularity, int(n_samples))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}mask_method_name does not name a mask method ({err})") from None


def method_of_legacy_code(code: Tensor, where: str = "") -> MaskMethod:
    """The MaskMethod a ``mask_method_code`` buffer of main up to 1ff13e0 names."""
    values = [int(v) for v in code.reshape(-1).tolist()]
    if len(values) != 3 or not (0 <= values[0] < len(_LEGACY_METHODS)
                                and 0 <= values[1] < len(_LEGACY_GRANULARITIES)
                                and values[2] >= 1):
        raise ValueError(f"{where}{LEGACY_METHOD_KEY} holds {values}, not a mask method code")
    return MaskMethod(_LEGACY_METHODS[values[0]], _LEGACY_GRANULARITIES[values[1]], values[2])


def saved_method(state: Mapping[str, Tensor], prefix: str = "",
                 where: str = "") -> Optional[MaskMethod]:
    """The mask method a layer's saved state names (either form), or None
    when it names none (a partial state)."""
    if prefix + "mask_method_name" in state:
        return method_of_tensor(state[prefix + "mask_method_name"], where)
    if prefix + LEGACY_METHOD_KEY in state:
        return method_of_legacy_code(state[prefix + LEGACY_METHOD_KEY], where)
    return None
