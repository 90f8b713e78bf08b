"""Discovery aimed at a size (Edge Pruning's and Sheared-LLaMA's Lagrangian):
instead of a fixed λ·penalty, the loss adds

    λ₁·(d − t) + λ₂·(d − t)²,

where d is the expected density of the masks (the fraction of masked weights
the training mask keeps, differentiable in the logits) and t the target.  The
multipliers λ₁, λ₂ start at 0 and are trained by gradient *ascent* (Adam
without momentum, ``maximize``: momentum made them overshoot, measured on the
test model), so they grow while the masks miss the target and the masks are
pushed towards it from either side.  The gap d − t takes its value from the
hard mask 1[s > 0] and its gradient from the expected density (straight
through): at a small β the expected density of undecided logits says little
of the hard mask the cut will keep.  t warms up linearly from the masks'
starting density to the target over the first ``warmup`` epochs, while β holds
at its start (engine/protocol.py); β then anneals over the remaining epochs,
each of which starts with every logit shifted by one constant so that the hard
mask holds the target (subind_fast.nn.shift_to_density: once β has grown, the
multipliers alone cannot move the locked logits, and masks that ended above or
below the target lost accuracy in the cut).  At the end the hard mask is
cut to exactly the target size (subind_fast.nn.keep_exactly).
"""
from __future__ import annotations

import torch
from torch import Tensor


class DensityTarget:
    """The Lagrangian of one discovery run over ``layers`` (masked layers)."""

    def __init__(self, layers, target: float, warmup: int, lr: float):
        # target, warmup and lr come from a Discovery its validate() checked
        self.layers = list(layers)
        self.total = sum(layer.kept_and_total()[1] for layer in self.layers)
        device = next(iter(self.layers[0].masked_parameters().values()))[1].device
        self.multipliers = torch.zeros(2, dtype=torch.float32, device=device,
                                       requires_grad=True)
        self.optimizer = torch.optim.Adam([self.multipliers], lr=lr, betas=(0.0, 0.999),
                                          maximize=True)
        self.target, self.warmup = float(target), int(warmup)
        with torch.no_grad():
            self.start = float(self.expected_density())
        self.current = self.target if self.warmup == 0 else self.start

    def expected_density(self) -> Tensor:
        return torch.stack([layer.expected_kept() for layer in self.layers]).sum() / self.total

    def hard_density(self) -> Tensor:
        """The hard masks' density, on the logits' device (read every step:
        no host synchronisation); computed in float64 and rounded to float32
        as a Python number would be."""
        return (self._hard_kept().to(torch.float64) / self.total).to(torch.float32)

    def _hard_kept(self) -> Tensor:
        return torch.stack([layer.hard_kept() for layer in self.layers]).sum()

    def begin_epoch(self, epoch: int) -> None:
        """The target of this epoch (linear warm-up, then the target)."""
        reached = 1.0 if self.warmup == 0 else min(1.0, (epoch + 1) / self.warmup)
        self.current = self.start + (self.target - self.start) * reached

    def loss(self) -> Tensor:
        """The Lagrangian term of this step.  The multipliers take the ascent
        step of the previous step's gradient first (the training loop steps
        only the logits' optimizer)."""
        if self.multipliers.grad is not None:
            self.optimizer.step()
            self.optimizer.zero_grad()
        soft = self.expected_density()
        # The value is the hard mask's density (what the cut will keep), the
        # gradient the expected density's (straight through): at a small β the
        # expected density of undecided logits (σ ≈ ½) says little of the hard mask.
        gap = self.hard_density() + (soft - soft.detach()) - self.current
        return self.multipliers[0] * gap + self.multipliers[1] * gap * gap

    def state_dict(self) -> dict:
        """Everything the Lagrangian carries between steps (a resumed run
        continues exactly): the multipliers, the ascent step still pending
        (their last gradient), their optimizer, the warm-up's start and the
        current target."""
        grad = self.multipliers.grad
        return {"multipliers": self.multipliers.detach().clone(),
                "pending_gradient": None if grad is None else grad.detach().clone(),
                "optimizer": self.optimizer.state_dict(), "start": self.start,
                "current": self.current}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.multipliers.copy_(state["multipliers"])
        grad = state["pending_gradient"]
        self.multipliers.grad = None if grad is None else grad.to(self.multipliers.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.start, self.current = float(state["start"]), float(state["current"])

    def state(self) -> dict:
        with torch.no_grad():
            density = float(self.expected_density())
        return {"target_density": self.target, "expected_density": density,
                "density_before_cut": int(self._hard_kept()) / self.total,
                "lagrange_multipliers": [float(v) for v in self.multipliers.detach()]}
