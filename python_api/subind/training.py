"""Training loops shared by base training, discovery and transfer: batches over
a tensor dataset, a task that defines loss and accuracy, per-epoch CSV logs.

The arithmetic task scores the last token only (the answer c of ``a b sep c``),
as the paper reports; the model sees ``a b sep`` and predicts c.
"""
from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn


@dataclass
class Metrics:
    loss: float
    accuracy: float


class LastTokenTask:
    """Next-token prediction of the last token of each row (the answer)."""

    def logits(self, model: nn.Module, rows: Tensor) -> Tensor:
        return model(input_ids=rows[:, :-1], logits_to_keep=1).logits[:, -1]

    def loss(self, model: nn.Module, rows: Tensor) -> Tensor:
        return nn.functional.cross_entropy(self.logits(model, rows), rows[:, -1])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, rows: Tensor, batch_size: int = 4096) -> Metrics:
        was_training = model.training
        model.eval()
        total_loss, correct = 0.0, 0
        for start in range(0, rows.shape[0], batch_size):
            batch = rows[start:start + batch_size]
            logits = self.logits(model, batch)
            total_loss += nn.functional.cross_entropy(logits, batch[:, -1], reduction="sum").item()
            correct += (logits.argmax(-1) == batch[:, -1]).sum().item()
        model.train(was_training)
        n = max(1, rows.shape[0])
        return Metrics(total_loss / n, correct / n)


def _tensorboard_writer(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    shutil.rmtree(folder, ignore_errors=True)  # this stage's previous attempt
    return SummaryWriter(str(folder))


def batches(rows: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """One shuffled epoch of mini-batches."""
    order = torch.randperm(rows.shape[0], generator=generator)
    for start in range(0, rows.shape[0], batch_size):
        yield rows[order[start:start + batch_size]]


class EpochLog:
    """One CSV line per epoch (and a TensorBoard scalar when tensorboard is
    installed).  A stage always trains from its first epoch, so a log is
    started afresh when its stage (re)starts: a resumed sweep never repeats rows."""

    def __init__(self, path: Optional[Path], fields: list[str]):
        self.path, self.fields = path, fields
        self._tb = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(fields)
            if os.environ.get("SUBIND_TENSORBOARD", "1") == "1":
                self._tb = _tensorboard_writer(Path(str(path.with_suffix("")) + "-tb"))

    def write(self, **values) -> None:
        if self.path is None:
            return
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([values.get(k, "") for k in self.fields])
        if self._tb is not None:
            for key, value in values.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, values.get("epoch", 0))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def train(model: nn.Module, optimizer: torch.optim.Optimizer, task: LastTokenTask, train_rows: Tensor,
          epochs: int, batch_size: int, seed: int, eval_rows: Optional[Tensor] = None,
          extra_loss: Optional[Callable[[], Tensor]] = None,
          before_epoch: Optional[Callable[[int], None]] = None,
          after_epoch: Optional[Callable[[int, Metrics], bool]] = None,
          log: Optional[EpochLog] = None, progress: Optional[str] = None,
          log_extra: Optional[Callable[[], dict]] = None) -> Optional[Metrics]:
    """Generic epoch loop.  ``after_epoch(epoch, eval_metrics)`` may return True to
    stop; ``log_extra()`` adds columns to the epoch's log line."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global generator: make each stage repeatable
    metrics = None
    bar = tqdm(range(epochs), desc=progress, leave=False, disable=progress is None)
    for epoch in bar:
        if before_epoch is not None:
            before_epoch(epoch)
        model.train()
        running, count = 0.0, 0
        for batch in batches(train_rows, batch_size, gen):
            loss = task.loss(model, batch)
            if extra_loss is not None:
                loss = loss + extra_loss()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item() * batch.shape[0]
            count += batch.shape[0]
        metrics = task.evaluate(model, eval_rows) if eval_rows is not None else None
        if log is not None:
            log.write(epoch=epoch, train_loss=running / max(1, count),
                      eval_loss=metrics.loss if metrics else "",
                      eval_accuracy=metrics.accuracy if metrics else "",
                      **(log_extra() if log_extra else {}))
        if metrics is not None:
            bar.set_postfix(acc=f"{metrics.accuracy:.3f}")
        if after_epoch is not None and after_epoch(epoch, metrics):
            break
    return metrics
