"""Training loops shared by every stage of every experiment: epochs over any
re-iterable source of batches (a torch DataLoader, or :class:`TensorBatches`
for data held in memory), driven by a task object that defines the loss and
the metrics, with per-epoch CSV logs.

A task implements::

    loss(model, batch) -> Tensor                 (one training step's loss)
    evaluate(model, data) -> Metrics             (loss and accuracy over an iterable)

and moves batches to the model's device itself, so data may live anywhere.
"""
from __future__ import annotations

import contextlib
import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass
class Metrics:
    loss: float
    accuracy: float


class Task(Protocol):
    """What discovery and training need of a task: a loss on a batch and
    metrics over data.  The capabilities below are optional; code that needs
    one asks ``isinstance(task, Capability)``."""

    def loss(self, model: nn.Module, batch) -> Tensor: ...

    def evaluate(self, model: nn.Module, data: Iterable) -> Metrics: ...


@runtime_checkable
class ScoresInputs(Protocol):
    """A task that gives the model's class scores of its inputs (the data
    checks compare their width with the data's classes)."""

    def logits(self, model: nn.Module, inputs: Tensor) -> Tensor: ...


@runtime_checkable
class ScoresBatches(Protocol):
    """A task that gives a batch's scores with the rows its loss counts (the
    KL objective compares them with the unmasked model's)."""

    def batch_logits(self, model: nn.Module, batch) -> tuple[Tensor, Tensor]: ...


@runtime_checkable
class ScoresExamples(Protocol):
    """A task that tells which evaluation examples the model gets right, in
    the data's order (one bool per example its accuracy counts): intervals
    over the examples (`subind analyze --specificity`) resample them."""

    def correct(self, model: nn.Module, data: Iterable) -> Tensor: ...


@runtime_checkable
class SumsOverRanks(Protocol):
    """A task whose metrics total over distributed ranks (each scores its own
    part of the data) through this function."""

    sum_over_ranks: Callable[[list[float]], list[float]]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Eval mode (hard masks, running statistics) for the block, then the
    mode the model had."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class TensorBatches:
    """Mini-batches of tensors held in memory (rows indexed together).  Every
    iteration is one epoch; with ``shuffle`` its order comes from a generator
    seeded once, so a run repeats exactly."""

    def __init__(self, *tensors: Tensor, batch_size: int, shuffle: bool = False, seed: int = 0):
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError("TensorBatches needs tensors with the same first dimension")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.tensors[0].shape[0] // self.batch_size)

    def __iter__(self) -> Iterator:
        n = self.tensors[0].shape[0]
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            index = (order[start:start + self.batch_size] if order is not None
                     else slice(start, start + self.batch_size))
            batch = tuple(t[index] for t in self.tensors)
            yield batch[0] if len(batch) == 1 else batch


class EpochLog:
    """One CSV line per epoch (and a TensorBoard scalar when tensorboard is
    installed).  A stage always trains from its first epoch, so a log is
    started afresh when its stage (re)starts: a resumed sweep never repeats rows."""

    def __init__(self, path: Optional[Path], fields: list[str], keep_epochs: int = 0):
        """``keep_epochs``: a resumed stage keeps the rows of the epochs it
        does not repeat (0 starts the log afresh)."""
        self.path, self.fields = path, fields
        self._tb = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            kept = _rows_before(path, keep_epochs) if keep_epochs else []
            with open(path, "w", newline="") as f:
                csv.writer(f).writerows([fields] + kept)
            if os.environ.get("SUBIND_TENSORBOARD", "1") == "1":
                self._tb = _tensorboard_writer(Path(str(path.with_suffix("")) + "-tb"))

    def write(self, **values) -> None:
        if self.path is None:
            return
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([values.get(k, "") for k in self.fields])
        if self._tb is not None:
            step = values.get("epochs_trained", values.get("epoch", 0))
            for key, value in values.items():
                if key not in ("epoch", "epochs_trained") and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _rows_before(path: Path, epochs: int) -> list[list[str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if r and r[0].isdigit() and int(r[0]) < epochs]


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    shutil.rmtree(folder, ignore_errors=True)  # this stage's previous attempt
    return SummaryWriter(str(folder))


#: BatchNorm statistics while a model trains: each batch's (and the running
#: statistics follow them), or the running statistics, frozen
BN_STATS = ("batch", "frozen")


def train_mode_for(bn_stats: str) -> Callable[[nn.Module], None]:
    """A ``train_mode`` for :func:`train` (how a model is put in training
    mode): train() for every module, except BatchNorm layers when
    ``bn_stats`` is "frozen" (they then normalise with their running
    statistics)."""
    if bn_stats not in BN_STATS:
        raise ValueError(f"bn_stats must be one of {BN_STATS}, got {bn_stats!r}")

    def apply(model: nn.Module) -> None:
        model.train()
        if bn_stats == "frozen":
            for norm in batchnorm_layers(model):
                norm.eval()
    return apply


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers (every dimension, SyncBatchNorm included)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, task, data: Iterable) -> bool:
    """Replace every BatchNorm layer's running statistics by their averages over
    ``data``: running_mean = mean over batches of the batch mean of the layer's
    input, running_var = mean of the unbiased batch variances (momentum None,
    PyTorch's cumulative average).  Only the BatchNorm layers run in training
    mode (masks stay hard); weights are untouched, and the model's mode and the
    layers' momenta are restored.  False (nothing done) for a model without
    BatchNorm.  Tells whether an ability lives in the weights or also in the
    statistics they were last normalised with."""
    norms = batchnorm_layers(model)
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    with evaluating(model):
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        for batch in data:
            task.logits(model, batch[0])
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return True


def train(model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, data: Iterable,
          epochs: int, seed: int, eval_data: Optional[Iterable] = None,
          extra_loss: Optional[Callable[[], Tensor]] = None,
          before_epoch: Optional[Callable[[int], None]] = None,
          after_epoch: Optional[Callable[[int, Optional[Metrics]], bool]] = None,
          log: Optional[EpochLog] = None, progress: Optional[str] = None,
          log_extra: Optional[Callable[[], dict]] = None,
          train_mode: Callable[[nn.Module], None] = nn.Module.train,
          first_epoch: int = 0,
          sum_over_ranks: Callable[[list[float]], list[float]] = lambda x: x,
          log_start: bool = False) -> Optional[Metrics]:
    """Train for ``epochs`` passes over ``data`` (from ``first_epoch`` when a
    stage resumes: the epochs before it are done).  ``before_epoch(epoch)`` runs
    first in each epoch (β schedules, ``sampler.set_epoch``);
    ``after_epoch(epoch, eval_metrics)`` may return True to stop;
    ``log_extra()`` adds columns to the epoch's log line; ``train_mode(model)``
    puts the model in training mode each epoch (e.g. all but frozen
    BatchNorm statistics); ``sum_over_ranks`` totals the loss sums over
    data-parallel ranks for the log.  Each log line carries ``epoch`` (its
    index) and ``epochs_trained`` (index + 1); ``log_start`` first logs the
    untrained model as ``epochs_trained`` 0.  The global RNG is
    seeded (dropout draws from it), so a stage repeats whatever ran before it."""
    from tqdm.auto import tqdm

    if first_epoch == 0:  # a resumed stage has restored the generator's state instead
        torch.manual_seed(seed)
    metrics = None

    def write_log(epochs_trained: int, train_loss, metrics: Optional[Metrics]) -> None:
        if log is not None:
            log.write(epoch=epochs_trained - 1 if epochs_trained else "",
                      epochs_trained=epochs_trained, train_loss=train_loss,
                      eval_loss=metrics.loss if metrics else "",
                      eval_accuracy=metrics.accuracy if metrics else "",
                      **(log_extra() if log_extra else {}))

    if log_start and first_epoch == 0:
        write_log(0, "", task.evaluate(model, eval_data) if eval_data is not None else None)
    # disable=None: tqdm draws only on a terminal, never into a log file
    bar = tqdm(range(first_epoch, epochs), desc=progress, leave=False,
               disable=True if progress is None else None)
    for epoch in bar:
        if before_epoch is not None:
            before_epoch(epoch)
        train_mode(model)
        # The loss sum stays on the loss's device until the epoch ends: reading it
        # every step would stall a GPU once per step.
        running, count = None, 0
        for batch in data:
            loss = task.loss(model, batch)
            if extra_loss is not None:
                loss = loss + extra_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            size = _batch_size(batch)
            weighted = loss.detach().to(torch.float64) * size
            running = weighted if running is None else running + weighted
            count += size
        running = 0.0 if running is None else float(running)
        running, count = sum_over_ranks([running, count])
        metrics = task.evaluate(model, eval_data) if eval_data is not None else None
        write_log(epoch + 1, running / max(1, count), metrics)
        if metrics is not None:
            bar.set_postfix(acc=f"{metrics.accuracy:.3f}")
        if after_epoch is not None and after_epoch(epoch, metrics):
            break
    return metrics


def _batch_size(batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return first.shape[0]
