"""Classification for the training loops (engine/training.py): batches are
(inputs, labels); the one task every image and token classifier here uses."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn

from .training import Metrics, evaluating, model_device

#: a label that counts for nothing (cross_entropy's ignore_index): the padding
#: samples that even out ranks (engine/distributed.py), an absent second label
IGNORE_LABEL = -100


def inverse_frequency_weights(data: Iterable, classes: int) -> Tensor:
    """Per-class loss weights ∝ 1 / frequency in ``data`` (mean weight 1 over
    the samples), for the class-weighted loss of unbalanced training sets."""
    counts = torch.zeros(classes, dtype=torch.float64)
    for batch in data:
        labels = batch[1].cpu()
        counts += torch.bincount(labels[labels != IGNORE_LABEL], minlength=classes).double()
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing} do not occur in the training data")
    return (counts.sum() / (classes * counts)).float()


class Classification:
    """Cross-entropy of ``model(inputs)`` (a tensor, or an output with
    ``.logits`` as transformers returns) against the labels.

    Inputs move to the model's device; uint8 images become [0, 1] floats;
    floating inputs are cast to ``input_dtype`` and, with ``mean``/``std``
    (per channel), normalised as (x − mean) / std.  Under ``autocast`` (a
    dtype) the forward runs under autocast on the model's device.
    ``class_weights`` weight each class's loss.  ``evaluate`` sums over ranks
    with ``sum_over_ranks`` (each rank scores its own part of the data);
    labels equal to IGNORE_LABEL count for nothing."""

    def __init__(self, input_dtype: torch.dtype = torch.float32,
                 autocast: Optional[torch.dtype] = None,
                 sum_over_ranks: Callable[[list[float]], list[float]] = lambda x: x,
                 mean=None, std=None, class_weights: Optional[Tensor] = None):
        self.input_dtype, self.autocast = input_dtype, autocast
        self.sum_over_ranks = sum_over_ranks
        self.mean, self.std, self.class_weights = mean, std, class_weights

    def inputs(self, model: nn.Module, inputs: Tensor) -> Tensor:
        device = model_device(model)
        inputs = inputs.to(device, non_blocking=True)
        if inputs.dtype == torch.uint8:
            inputs = inputs.float() / 255
        if inputs.is_floating_point():
            inputs = inputs.to(self.input_dtype)
            if self.mean is not None:
                shape = (1, -1) + (1,) * (inputs.dim() - 2)
                mean = torch.as_tensor(self.mean, dtype=inputs.dtype, device=device)
                std = torch.as_tensor(self.std, dtype=inputs.dtype, device=device)
                inputs = (inputs - mean.reshape(shape)) / std.reshape(shape)
        return inputs

    def logits(self, model: nn.Module, inputs: Tensor) -> Tensor:
        inputs = self.inputs(model, inputs)
        context = (torch.autocast(inputs.device.type, dtype=self.autocast) if self.autocast
                   else contextlib.nullcontext())
        with context:
            out = model(inputs)
        out = getattr(out, "logits", out)
        return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out

    def batch_logits(self, model: nn.Module, batch) -> tuple[Tensor, Tensor]:
        """(logits, which rows count: label ≠ IGNORE_LABEL) of one batch."""
        logits = self.logits(model, batch[0])
        return logits, batch[1].to(logits.device) != IGNORE_LABEL

    def loss(self, model: nn.Module, batch) -> Tensor:
        logits = self.logits(model, batch[0])
        weights = None if self.class_weights is None else self.class_weights.to(logits.device)
        return nn.functional.cross_entropy(logits, batch[1].to(logits.device), weight=weights,
                                           ignore_index=IGNORE_LABEL)

    @torch.no_grad()
    def predictions(self, model: nn.Module, data: Iterable) -> tuple[Tensor, Tensor]:
        """(predicted class, label) over ``data``, in eval mode."""
        predicted, labels = [], []
        with evaluating(model):
            for batch in data:
                predicted.append(self.logits(model, batch[0]).argmax(dim=-1).cpu())
                labels.append(batch[1].cpu())
        return torch.cat(predicted), torch.cat(labels)

    @torch.no_grad()
    def correct(self, model: nn.Module, data: Iterable) -> Tensor:
        """Whether each counted example (label ≠ IGNORE_LABEL) is classified
        right, in eval mode, in the data's order; its mean is ``evaluate``'s
        accuracy on one rank."""
        right = []
        with evaluating(model):
            for batch in data:
                logits = self.logits(model, batch[0])
                labels = batch[1].to(logits.device)
                counted = labels != IGNORE_LABEL
                right.append((logits.argmax(-1) == labels)[counted].cpu())
        return torch.cat(right) if right else torch.zeros(0, dtype=torch.bool)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Iterable) -> Metrics:
        loss_sum = correct = count = 0.0
        with evaluating(model):
            for batch in data:
                logits = self.logits(model, batch[0])
                labels = batch[1].to(logits.device)
                loss_sum += float(nn.functional.cross_entropy(
                    logits, labels, reduction="sum", ignore_index=IGNORE_LABEL))
                correct += float((logits.argmax(-1) == labels).sum())
                count += float((labels != IGNORE_LABEL).sum())
        loss_sum, correct, count = self.sum_over_ranks([loss_sum, correct, count])
        if count == 0:
            raise ValueError("the evaluation data are empty")
        return Metrics(loss_sum / count, correct / count)
