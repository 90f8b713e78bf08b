"""How a masked layer computes its output from its mask state (nn/mask_state.py):
the fused op in the common case (weight granularity, a deterministic mode),
else one mask sample per slice of the batch, or the units' mask scaling the
plain GEMM's outputs (neurons, channels, the heads of a q/k/v projection) or
its inputs (the heads an output projection reads) at unit granularity; under an
ablation (nn/ablation.py) the removed weights add what they compute on the
reference input.  Every path marks the mask as run (``mask_ran``, checked by
nn/coverage.py).

Once the layer's L0 penalty has been asked for (``l0_penalty``: from then on
a training loop is expected to ask every step), a training forward at weight
granularity calls the op's *_l0 form, whose mask pass also yields the
penalty (and whose backward adds the penalty's gradient to ∂s in its pass):
the penalty is kept for the step (``forward_penalty``), and ``sf.l0_penalty``
takes it instead of reading the logits twice more.  A layer never asked for
its penalty (a target-density run, inference, a benchmark of the layer)
computes none.  It is kept outside the module (a weak map), so copying or
pickling a layer never meets a tensor of the autograd graph."""
from __future__ import annotations

import itertools
import weakref
from typing import Callable, Optional

import torch
from torch import Tensor

from ..ops import functional as SF
from ..ops.modes import mode as mode_of
from ..units import expand_units, unit_vector
from .methods import noise_keys, unit_mask

#: the layer attribute that holds its ablation's name (nn/ablation.py; absent: zero)
ABLATION_ATTRIBUTE = "ablation"
#: each ablation's code in a saved layer's ``ablation_code`` buffer (fixed: files keep them)
ABLATION_CODES = {"zero": 0, "mean": 1, "learned": 2, "corrupted": 3}
#: the state an ablated layer saves besides its mask state (nn/ablation.py)
ABLATION_STATE = ("ablation_code", "ablation_input")

#: the layer attribute set once its L0 penalty has been asked for (nn/mask_state.py)
PENALTY_WANTED = "_l0_penalty_wanted"
#: layer → (penalty, logits, logits' version, β's version, stamp) of its last training forward
_FORWARD_PENALTIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_STAMPS = itertools.count()


def _forget_when_backward_runs(layer, penalty: Tensor, stamp: int) -> None:
    """Drop the layer's kept penalty when backward reaches the op that made it:
    its graph is then spent (a second backward through it would fail).  The
    hook holds the layer weakly and the stamp, never the penalty (no cycle
    through the autograd graph)."""
    layer_ref = weakref.ref(layer)

    def spent(_grads):
        owner = layer_ref()
        kept = _FORWARD_PENALTIES.get(owner) if owner is not None else None
        if kept is not None and kept[4] == stamp:
            del _FORWARD_PENALTIES[owner]

    penalty.grad_fn.register_prehook(spent)


class MaskedForward:
    """The forward half of a masked layer (mixed into MaskedWeightMixin)."""

    def _note_mask_ran(self) -> None:
        if not torch.compiler.is_compiling():
            self.__dict__["mask_ran"] = True

    def _mask_weight(self, weight_name: str) -> Tensor:
        """W_eff of one masked weight in the current mode (marks the mask as
        run); a sampled mode draws one sample per call."""
        self._note_mask_ran()
        weight, logits = self.masked_parameters()[weight_name]
        mode = self.mode
        noise = None
        if mode_of(mode).sampled:
            noise = noise_keys(logits, 1, self.mask_method.generator)[0]
        if self.mask_method.granularity == "weight":
            return SF.mask_weight(weight, logits, self.beta, mode, noise)
        return weight * expand_units(unit_mask(logits, self.beta, mode, noise),
                                     weight.shape).to(weight.dtype)

    def _fuses_penalty(self, mode: str, logits: Tensor) -> bool:
        """Whether this forward computes the L0 penalty with the output: the
        penalty has been asked of the layer before, the method's training
        mode, a graph being built for the logits, and outside torch.compile
        (a compiled forward keeps no Python state, so sf.l0_penalty then
        makes its own pass)."""
        return (self.__dict__.get(PENALTY_WANTED, False)
                and mode == self.mask_method.training_op_mode and logits.requires_grad
                and torch.is_grad_enabled() and not torch.compiler.is_compiling())

    def _keep_penalty(self, penalty: Tensor, logits: Tensor) -> None:
        stamp = next(_STAMPS)
        _FORWARD_PENALTIES[self] = (penalty, logits, logits._version,
                                    self._buffers["beta"]._version, stamp)
        if penalty.grad_fn is not None:
            _forget_when_backward_runs(self, penalty, stamp)

    def forward_penalty(self) -> Optional[Tensor]:
        """The L0 penalty the last forward computed, handed out once, if it
        is still the penalty of the current logits and β (neither changed
        since, no backward through it yet), over the logits the layer holds
        now (not a gathered copy of sharded ones) and differentiable where it
        must be; else None."""
        kept = _FORWARD_PENALTIES.pop(self, None)
        if kept is None or len(self.masked_weights) != 1:
            return None
        penalty, logits, logits_version, beta_version, _ = kept
        if logits is not getattr(self, self.masked_weights[0][1]) \
                or logits._version != logits_version \
                or self._buffers["beta"]._version != beta_version:
            return None
        if torch.is_grad_enabled() and logits.requires_grad and not penalty.requires_grad:
            return None
        return penalty

    def _deterministic_weight_mode(self) -> Optional[str]:
        """The mode, marking the mask as run, when the layer's output is one call
        of its fused op (weight granularity, a deterministic mode); else None."""
        mode = self.mode
        if self.mask_method.granularity != "weight" or mode_of(mode).sampled \
                or ABLATION_ATTRIBUTE in self.__dict__:
            return None
        self._note_mask_ran()
        return mode

    def _operands(self) -> tuple:
        """(θ, s, bias, β) of a single-weight layer.  Read from the module's
        dicts: nn.Module.__getattr__ costs ~0.5 µs a name, as much as the rest
        of a small layer's Python; a parametrized weight (a property) is read
        the ordinary way."""
        params = self._parameters
        if "weight" in params:
            return params["weight"], params["logits"], params.get("bias"), self._buffers["beta"]
        return self.weight, self.logits, self.bias, self.beta

    def _masked_output(self, x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor],
                       op: Callable, gemm: Callable) -> Tensor:
        """The layer's output in the current mode: ``op(x, θ, s, b, mode,
        noise, with_penalty)`` (the fused masked op; with_penalty: its *_l0
        form, which returns (out, penalty)) at weight granularity; at unit
        granularity ``gemm(x, θ)`` with its outputs (or, for units along the
        input axis, its inputs) scaled by the units' mask, plus b.  A
        sampled mode with n samples applies sample k to the k-th slice of the
        batch (dim 0)."""
        self._note_mask_ran()
        mode, method = self.mode, self.mask_method
        sampled = mode_of(mode).sampled
        n = method.n_samples if sampled else 1
        keys = noise_keys(logits, n, method.generator) if sampled else [None]
        parts = _batch_slices(x, n)
        # the first sample's op also yields the penalty (the reference pass never does)
        fuse = [method.granularity == "weight" and self._fuses_penalty(mode, logits)]

        def masked(part, key, bias):
            if method.granularity == "weight":
                if fuse[0]:
                    fuse[0] = False
                    out, penalty = op(part, weight, logits, bias, mode, key, True)
                    self._keep_penalty(penalty, logits)
                    return out
                return op(part, weight, logits, bias, mode, key, False)
            if self.mask_unit_axes["weight"] == self._unit_axis:
                return self._scaled_units(gemm(part, weight),
                                          unit_mask(logits, self.beta, mode, key), bias)
            # units of the input (an output projection's heads): scale the input's features
            return self._with_bias(gemm(self._scaled_inputs(
                part, unit_mask(logits, self.beta, mode, key)), weight), bias)

        outs = [masked(part, key, bias) for part, key in zip(parts, keys)]
        out = outs[0] if n == 1 else torch.cat(outs, 0)
        reference = self._reference_input(x)
        if reference is None:
            return out
        # nn/ablation.py: the removed weights see the reference input, x_ref·(θ ⊙ (1 − m))ᵀ
        return out + (gemm(reference, weight) - masked(reference, keys[0], None))

    def _reference_input(self, x: Tensor) -> Optional[Tensor]:
        """The input the removed weights see under the layer's ablation
        (nn/ablation.py), or None (zero ablation, or the full model running)."""
        how = self.__dict__.get(ABLATION_ATTRIBUTE)
        if how is None or self.__dict__.get("_ablation_off", False):
            return None
        if how == "corrupted":
            recorded = self.__dict__.get("_corrupted_input")
            if recorded is None:
                raise RuntimeError(f"{type(self).__name__}: ablation 'corrupted' but no corrupted "
                                   "input recorded; call sf.nn.record_corrupted(model, run) first")
            if recorded.shape != x.shape:
                raise ValueError(f"{type(self).__name__}: the recorded corrupted input has shape "
                                 f"{tuple(recorded.shape)}, this input {tuple(x.shape)}; record "
                                 "the corrupted batch paired with this one")
            return recorded.to(x.dtype)
        if not self.__dict__.get("_means_recorded", True):
            raise RuntimeError(f"{type(self).__name__}: ablation 'mean' but no mean input "
                               "recorded; call sf.nn.record_means(model, batches) first")
        reference = self.ablation_input.to(x.dtype)
        if self._output_unit_dim == 1:  # a convolution's channel means at every position
            shape = (1, reference.numel(), *x.shape[2:])
            return reference.view(1, -1, *[1] * (x.dim() - 2)).expand(shape)
        # a batch of one (the mean over the reference set), broadcast over x's batch
        return reference.unsqueeze(0)

    @staticmethod
    def _scaled_inputs(x: Tensor, unit_mask_values: Tensor) -> Tensor:
        return x * unit_vector(unit_mask_values, x.shape[-1]).to(x.dtype)

    def _with_bias(self, y: Tensor, bias: Optional[Tensor]) -> Tensor:
        if bias is None:
            return y
        return y + (bias if self._output_unit_dim == -1
                    else bias.view(-1, *[1] * (y.dim() - 2)))

    def _scaled_units(self, y: Tensor, unit_mask_values: Tensor, bias: Optional[Tensor]) -> Tensor:
        units = unit_vector(unit_mask_values, y.shape[self._output_unit_dim]).to(y.dtype)
        if self._output_unit_dim != -1:
            units = units.view(-1, *[1] * (y.dim() - 2))
        return self._with_bias(y * units, bias)

    def masked_weight(self) -> Tensor:
        """W_eff = θ ⊙ m of the layer's (single) masked weight in the current mode."""
        return self._mask_weight(self.masked_weights[0][0])


def _batch_slices(x: Tensor, n: int) -> list[Tensor]:
    """x split into n slices along dim 0 (the batch)."""
    if n == 1:
        return [x]
    if x.dim() < 2 or x.shape[0] < n:
        raise ValueError(f"n_samples={n} mask samples need a batched input with at least {n} "
                         f"entries along dim 0, got shape {tuple(x.shape)}")
    return list(torch.tensor_split(x, n, dim=0))
