"""How a masked layer computes its output from its mask state (nn/mask_state.py):
the fused op in the common case (weight granularity, a deterministic mode),
else one mask sample per slice of the batch, or the units' mask scaling the
plain GEMM at neuron granularity.  Every path marks the mask as run
(``mask_ran``, checked by nn/coverage.py)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .. import functional as SF
from .._validation import SAMPLED_MODES
from .methods import noise_keys, unit_mask


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
        if mode in SAMPLED_MODES:
            noise = noise_keys(logits, 1, self.mask_method.generator)[0]
        return SF.mask_weight(weight, logits, self.beta, mode, noise)

    def _deterministic_weight_mode(self) -> Optional[str]:
        """The mode, marking the mask as run, when the layer's output is one call
        of its fused op (weight granularity, a deterministic mode); else None."""
        mode = self.mode
        if self.mask_method.granularity != "weight" or mode in SAMPLED_MODES:
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
        noise)`` (the fused masked op) at weight granularity; at neuron
        granularity ``gemm(x, θ)`` scaled by the units' mask, plus b.  A
        sampled mode with n samples applies sample k to the k-th slice of the
        batch (dim 0)."""
        self._note_mask_ran()
        mode, method = self.mode, self.mask_method
        n = method.n_samples if mode in SAMPLED_MODES else 1
        keys = noise_keys(logits, n, method.generator) if mode in SAMPLED_MODES else [None]
        parts = _batch_slices(x, n)
        if method.granularity == "weight":
            outs = [op(part, weight, logits, bias, mode, key) for part, key in zip(parts, keys)]
        else:
            outs = [self._scaled_units(gemm(part, weight), unit_mask(logits, self.beta, mode, key),
                                       bias) for part, key in zip(parts, keys)]
        return outs[0] if n == 1 else torch.cat(outs, 0)

    def _scaled_units(self, y: Tensor, unit_mask_values: Tensor, bias: Optional[Tensor]) -> Tensor:
        def along_units(t: Tensor) -> Tensor:
            t = t.reshape(-1).to(y.dtype)
            return t if self._output_unit_dim == -1 else t.view(-1, *[1] * (y.dim() - 2))

        y = y * along_units(unit_mask_values)
        return y if bias is None else y + along_units(bias)

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
