"""Mask methods: how a masked layer's mask is trained, at which
granularity, and its sparsity penalty.  One layer API serves them all
(``method=`` on the masked layers and on ``mask_model``).

Trained methods (the logits s are trainable; β is the inverse temperature 1/τ):

* ``continuous`` (default; continuous sparsification, the paper): m = σ(βs)
  while training, penalty Σσ(βs) (the expected mask size).
* ``hard_concrete`` (Louizos et al.): m = clamp(σ(β(s + L))·(1+2ε) − ε, 0, 1)
  with logistic noise L and ε = 0.1 (γ = −0.1, ζ = 1.1); penalty the expected
  L0, Σσ(s − log(ε/(1+ε))/β) = Σ P(m ≠ 0).  Louizos' τ = 2/3 is β = 1.5.
* ``gumbel`` (Csordás et al.): m = 1[σ(β(s + L)) > ½] with the straight-through
  gradient of σ(β(s + L)); penalty Σs (their r = αΣlᵢ); ``n_samples`` masks per
  batch, each applied to its slice of the batch (dim 0).

For all three the test-time mask is deterministic: 1[s > 0] — for
hard-concrete the noise-free gate clamp(σ(s)(1+2ε) − ε, 0, 1) binarised at ½,
which under the symmetric stretch is the same test.  The noise is drawn on the
logits' device: each forward draws one 62-bit seed from ``generator`` (the
user's torch.Generator, or torch's default one — seeded by torch.manual_seed
and restored by activation checkpointing) and the kernels expand it into
per-element noise that backward regenerates (subind_fast/ops/noise.py).

Subnetworks chosen without training (magnitude, lottery ticket) are not
mask methods: subind_fast/subnetworks/selection.py returns them as Subnetworks, and
``mask_model(model, subnetwork=…)`` installs one (frozen ±1 logits, hard mode).

Granularity: ``weight`` (one logit per weight), ``neuron`` (one logit per
output unit — a row of a Linear weight, an output channel of a convolution;
the unit's mask scales the unit's output) or ``head`` (one logit per
attention head of each projection that subind_fast/nn/heads.py knows — q/k/v
rows, the output projection's columns — and per output unit elsewhere).  A
unit's penalty counts the unit's weights, so λ means the same at every
granularity (subind_fast/units.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..ops import functional as SF
from ..ops.mask_math import differentiable_mask
from ..ops.modes import ZERO_GATE_LOG_ODDS, mode as mode_of

TRAINED = {"continuous": "soft", "hard_concrete": "concrete", "gumbel": "gumbel"}
METHODS = tuple(TRAINED)
GRANULARITIES = ("weight", "neuron", "head")
#: a default inverse temperature per trained method (continuous anneals β itself)
DEFAULT_BETA = {"continuous": 1.0, "hard_concrete": 1.5, "gumbel": 1.0}


@dataclass(frozen=True)
class MaskMethod:
    """``name`` (METHODS), ``granularity`` (GRANULARITIES), ``n_samples`` mask
    samples per forward (sampled methods), ``generator`` for their noise."""

    name: str = "continuous"
    granularity: str = "weight"
    n_samples: int = 1
    generator: Optional[torch.Generator] = None

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.name!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got "
                             f"{self.granularity!r}")
        if not isinstance(self.n_samples, int) or isinstance(self.n_samples, bool) \
                or self.n_samples < 1:
            raise ValueError(f"n_samples must be a positive int, got {self.n_samples!r}")
        if self.n_samples > 1 and not self.sampled:
            raise ValueError(f"n_samples={self.n_samples} needs a sampled method "
                             f"(hard_concrete, gumbel), not {self.name!r}")
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got "
                            f"{type(self.generator).__name__}")

    @property
    def sampled(self) -> bool:
        """Whether the training mask is drawn from noise (ops/modes.py)."""
        return mode_of(self.training_op_mode).sampled

    @property
    def training_op_mode(self) -> str:
        """The op mode a training forward uses."""
        return TRAINED[self.name]

    def as_dict(self) -> dict:
        return {"method": self.name, "granularity": self.granularity,
                "n_samples": self.n_samples}


def as_method(method, granularity: Optional[str] = None, n_samples: Optional[int] = None,
              generator: Optional[torch.Generator] = None) -> MaskMethod:
    """A MaskMethod from a name or a MaskMethod (explicit arguments win)."""
    if isinstance(method, MaskMethod):
        base = method
    elif isinstance(method, str):
        base = MaskMethod(method)
    else:
        raise TypeError(f"method must be a name {METHODS} or a MaskMethod, got {method!r}")
    return MaskMethod(base.name, granularity or base.granularity,
                      base.n_samples if n_samples is None else n_samples,
                      base.generator if generator is None else generator)


def noise_keys(logits: Tensor, n: int, generator: Optional[torch.Generator]) -> list[Tensor]:
    """n keys [seed, k] for one forward: one fresh seed from ``generator`` (on
    the logits' device; no host synchronisation), one stream per sample."""
    if generator is not None and generator.device.type != logits.device.type:
        raise ValueError(f"the mask generator is on {generator.device} but the logits are on "
                         f"{logits.device}; create it with torch.Generator(device=...)")
    seed = torch.randint(0, 2 ** 62, (), generator=generator, device=logits.device,
                         dtype=torch.int64)
    return [torch.stack([seed, torch.full_like(seed, k)]) for k in range(n)]


def unit_mask(logits: Tensor, beta: Tensor, mode: str, noise: Optional[Tensor]) -> Tensor:
    """The mask of per-unit logits (neuron granularity): the same values and
    gradient β·slope as the weight-level ops, on the few unit logits with
    autograd (ops/mask_math.py: differentiable_mask)."""
    return differentiable_mask(logits, beta, mode, noise)


class _ShiftedSigmoidSum(torch.autograd.Function):
    """Σσ(s + c) with gradient σ'(s + c); keeps only s for backward (the σ
    values are recomputed), as the continuous penalty's op does."""

    @staticmethod
    def forward(ctx, logits, shift):
        ctx.save_for_backward(logits, shift)
        with torch.no_grad():
            z = logits + shift.to(logits)
            return torch.sigmoid(z).sum(dtype=torch.float64).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad):
        logits, shift = ctx.saved_tensors
        z = logits + shift.to(logits)
        return grad * torch.sigmoid(z) * torch.sigmoid(-z), None


def l0_penalty(method: MaskMethod, logits: Tensor, beta: Tensor) -> Tensor:
    """The method's sparsity penalty over ``logits`` (per logit; the caller
    scales neuron-level terms by the unit's weight count)."""
    if method.name == "continuous":
        return SF.l0(logits, beta)
    if method.name == "hard_concrete":
        # P(m ≠ 0) = σ(s − τ·log(−γ/ζ)), τ = 1/β
        shift = ZERO_GATE_LOG_ODDS / beta.to(device=logits.device, dtype=torch.float64)
        return _ShiftedSigmoidSum.apply(logits, shift.reshape(()))
    return logits.sum()  # gumbel


def expected_kept(method: MaskMethod, logits: Tensor, beta: Tensor) -> Tensor:
    """Σ P(the training mask keeps the weight) over ``logits`` (per logit),
    differentiable: σ(βs) for continuous sparsification and P(m ≠ 0) for
    hard-concrete (both their L0 penalty), σ(s) for Gumbel (P(s + L > 0))."""
    if method.name == "gumbel":
        return SF.l0(logits, torch.ones((), dtype=torch.float32, device=logits.device))
    return l0_penalty(method, logits, beta)
