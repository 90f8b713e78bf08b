"""The arithmetic task: next-token prediction of the last token of each row
``a b sep c`` (the answer c, which the paper reports accuracy on)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from ...engine.training import Metrics, evaluating, model_device


class LastTokenTask:
    """The model sees ``a b sep`` and predicts c.  ``sum_over_ranks`` totals the
    evaluation sums over data-parallel ranks (``subind discover`` sets it)."""

    def __init__(self):
        self.sum_over_ranks = lambda values: values

    def logits(self, model: nn.Module, rows: Tensor) -> Tensor:
        rows = rows.to(model_device(model), non_blocking=True)
        return model(input_ids=rows[:, :-1], logits_to_keep=1).logits[:, -1]

    def batch_logits(self, model: nn.Module, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(logits of the answer, every row counts) of one batch."""
        logits = self.logits(model, rows)
        return logits, torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)

    def loss(self, model: nn.Module, rows: Tensor) -> Tensor:
        return nn.functional.cross_entropy(self.logits(model, rows),
                                           rows[:, -1].to(model_device(model)))

    @torch.no_grad()
    def correct(self, model: nn.Module, data: Iterable[Tensor]) -> Tensor:
        """Whether each row's answer is predicted right, in the data's order
        (its mean is ``evaluate``'s accuracy on one rank)."""
        right = []
        with evaluating(model):
            for rows in data:
                logits = self.logits(model, rows)
                right.append((logits.argmax(-1) == rows[:, -1].to(logits.device)).cpu())
        return torch.cat(right) if right else torch.zeros(0, dtype=torch.bool)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Iterable[Tensor]) -> Metrics:
        total_loss, correct, n = 0.0, 0, 0
        with evaluating(model):
            for rows in data:
                logits = self.logits(model, rows)
                target = rows[:, -1].to(logits.device)
                total_loss += nn.functional.cross_entropy(logits, target, reduction="sum").item()
                correct += (logits.argmax(-1) == target).sum().item()
                n += rows.shape[0]
        total_loss, correct, n = self.sum_over_ranks([total_loss, correct, n])
        return Metrics(total_loss / max(1, n), correct / max(1, n))
