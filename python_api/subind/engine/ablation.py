"""Ablation targets and the training objective of a discovery, for any task
(subind_fast/nn/ablation.py has the math).

* ``mean`` / ``learned``: the reference set is one pass over the training
  batches (each masked layer's mean input; ``learned`` then trains it with
  the logits).
* ``corrupted``: every example is paired with another example of its data
  set, a fixed derangement drawn from the seed (``CorruptedPairs``; a
  resample ablation), so the pairs do not depend on the batch size, the
  order or the number of ranks; before every forward of the masked model the
  unmasked model runs on the batch's partners and each layer records its
  input there (``recording_partners``, sf.nn.record_corrupted).
* objective ``kl``: the loss is KL(p_full ‖ p_masked) to the unmasked model's
  output on the same batch (the task's ``batch_logits``) instead of its loss
  on the labels.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

import subind_fast as sf

from .training import ScoresBatches

OBJECTIVES = ("labels", "kl")


class KLToFullModel:
    """``task`` with its loss replaced by KL(p_full ‖ p_masked), the mean over
    the batch's counted rows; evaluation and everything else as ``task``."""

    def __init__(self, task):
        if not isinstance(task, ScoresBatches):
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
    return KLToFullModel(task) if objective == "kl" else task


def start_means(model: nn.Module, task, ablation: str, batches: Iterable) -> None:
    """The mean inputs of a mean or learned ablation over ``batches`` (the
    training set, one pass, run by ``task.loss``), on the model as it trains
    (cast, on its device, wrapped); nothing for the other ablations."""
    if ablation in ("mean", "learned"):
        sf.nn.record_means(model, batches, forward=task.loss)


class Paired(NamedTuple):
    """A sample (or, collated, a batch) with its corrupted partner."""
    clean: Any
    corrupted: Any


def partners(n: int, seed: int) -> Tensor:
    """partner[i] of each of ``n`` samples: one cycle through a permutation
    drawn from ``seed`` (a derangement: nobody is its own partner)."""
    if n < 2:
        raise ValueError(f"a corrupted (resample) ablation pairs each sample with another: "
                         f"the data need at least 2 samples, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    partner = torch.empty(n, dtype=torch.long)
    partner[order] = order.roll(-1)
    return partner


class CorruptedPairs(Dataset):
    """``dataset`` with each sample paired with another one: sample i with
    sample partner[i], where the partners follow one cycle through a seeded
    permutation (a derangement: nobody is its own partner)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.partner = partners(len(dataset), seed)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Paired:
        return Paired(self.dataset[i], self.dataset[int(self.partner[i])])

    def __getattr__(self, name):  # ImageFolder-style datasets name their classes
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class recording_partners:
    """The clean halves of paired ``batches`` (of ``CorruptedPairs``), each
    yielded after ``model`` (unmasked, no gradient) has run ``task.loss`` on
    its partners and every masked layer recorded its input there: the next
    forward — the one on the yielded batch — sees them (sf.nn.record_corrupted).
    Works for training and evaluation loops alike, as neither needs to know."""

    def __init__(self, batches: Iterable, model: nn.Module, task):
        self.batches, self.model, self.task = batches, model, task

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator:
        for batch in self.batches:
            if not isinstance(batch, Paired):
                raise ValueError("ablation 'corrupted' needs each batch paired with its corrupted "
                                 "partners: wrap the data set in "
                                 "subind.engine.ablation.CorruptedPairs before batching it")
            sf.nn.record_corrupted(self.model, lambda: self.task.loss(self.model,
                                                                     batch.corrupted))
            yield batch.clean


class PairedTensorBatches:
    """Mini-batches of in-memory rows (as ``TensorBatches`` yields them), each
    paired with its partners' rows: the tensor counterpart of batching a
    ``CorruptedPairs`` data set."""

    def __init__(self, *tensors: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0,
                 pair_seed: int = 0):
        from .training import TensorBatches

        partner = partners(tensors[0].shape[0], pair_seed).to(tensors[0].device)
        self.width = len(tensors)
        self.batches = TensorBatches(*tensors, *(t[partner] for t in tensors),
                                     batch_size=batch_size, shuffle=shuffle, seed=seed)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Paired]:
        def one(part):
            return part[0] if len(part) == 1 else part

        for batch in self.batches:
            batch = batch if isinstance(batch, tuple) else (batch,)
            yield Paired(one(batch[:self.width]), one(batch[self.width:]))
