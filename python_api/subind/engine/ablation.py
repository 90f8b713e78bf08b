"""Ablation targets and the training objective of a discovery, for any task
(subind_fast/nn/ablation.py has the math).

* ``mean`` / ``learned``: the reference set is one pass over the training
  batches (each masked layer's mean input; ``learned`` then trains it with
  the logits).
* ``corrupted``: before every forward of the masked model, the same forward
  runs on a paired corrupted input and each layer records its input there
  (sf.nn.record_corrupted_before_each_forward); the pairing is a resample
  (sf.nn.resample: each input with the next of its batch).
* objective ``kl``: the loss is KL(p_full ‖ p_masked) to the unmasked model's
  output on the same batch (the task's ``batch_logits``) instead of its loss
  on the labels.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

import subind_fast as sf

OBJECTIVES = ("labels", "kl")


class KLToFullModel:
    """``task`` with its loss replaced by KL(p_full ‖ p_masked), the mean over
    the batch's counted rows; evaluation and everything else as ``task``."""

    def __init__(self, task):
        if not hasattr(task, "batch_logits"):
            raise ValueError(f"objective 'kl' needs a task with batch_logits(model, batch), "
                             f"which {type(task).__name__} lacks")
        self.task = task

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model: nn.Module, batch) -> Tensor:
        with torch.no_grad(), sf.nn.unmasked(model):
            reference, _ = self.task.batch_logits(model, batch)
        logits, counted = self.task.batch_logits(model, batch)
        def log_p(t: Tensor) -> Tensor:  # in fp32 at least
            return (t if t.dtype == torch.float64 else t.float()).log_softmax(-1)

        kl = nn.functional.kl_div(log_p(logits), log_p(reference), log_target=True,
                                  reduction="none").sum(-1)
        return kl[counted].sum() / counted.sum().clamp(min=1)


def ablating(task, model: nn.Module, ablation: str, objective: str):
    """Set ``model``'s (masked, not yet wrapped for distribution: a learned
    ablation adds parameters DDP must see) ablation and return the task to
    train with for ``objective``.  A mean or learned ablation then needs
    ``start_means`` once the model is ready to run."""
    if ablation not in sf.nn.ABLATIONS:
        raise ValueError(f"ablation must be one of {sf.nn.ABLATIONS}, got {ablation!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    sf.nn.set_ablation(model, ablation)
    if ablation == "corrupted":
        sf.nn.record_corrupted_before_each_forward(model)
    return KLToFullModel(task) if objective == "kl" else task


def start_means(model: nn.Module, task, ablation: str, batches: Iterable) -> None:
    """The mean inputs of a mean or learned ablation over ``batches`` (the
    training set, one pass, run by ``task.loss``), on the model as it trains
    (cast, on its device, wrapped); nothing for the other ablations."""
    if ablation in ("mean", "learned"):
        sf.nn.record_means(model, batches, forward=task.loss)
