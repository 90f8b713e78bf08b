"""Classification tasks for the engine's training loops (engine/training.py):
batches are (images in [0, 1], labels[, second labels]); the task normalises
the images, moves them to the model's device and, on CUDA, runs the forward
under bf16 autocast."""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from ...engine.training import Metrics, model_device

MEAN, STD = 0.5, 0.25  # the synthetic images' normalisation


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Eval mode (hard masks, running statistics) for the block, then back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def inverse_frequency_weights(data: Iterable, classes: int) -> Tensor:
    """Per-class loss weights ∝ 1 / frequency in ``data`` (mean weight 1 over
    the samples), for the class-weighted loss of unbalanced training sets."""
    counts = torch.zeros(classes, dtype=torch.float64)
    for batch in data:
        counts += torch.bincount(batch[1].cpu(), minlength=classes).double()
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing} do not occur in the training data")
    weights = counts.sum() / (classes * counts)
    return weights.float()


class ClassificationTask:
    """Cross-entropy over one head; ``class_weights`` (optional) weight each
    class's loss, e.g. inversely to its frequency in unbalanced data."""

    def __init__(self, class_weights: Optional[Tensor] = None, autocast: bool = True,
                 mean=MEAN, std=STD):
        self.class_weights, self.autocast = class_weights, autocast
        self.mean, self.std = mean, std

    def _inputs(self, model: nn.Module, images: Tensor) -> Tensor:
        device = model_device(model)
        images = images.to(device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = images.float() / 255
        mean = torch.as_tensor(self.mean, dtype=images.dtype, device=device).reshape(1, -1, 1, 1)
        std = torch.as_tensor(self.std, dtype=images.dtype, device=device).reshape(1, -1, 1, 1)
        return (images - mean) / std

    def _context(self, model: nn.Module):
        device = model_device(model)
        if self.autocast and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def logits(self, model: nn.Module, images: Tensor) -> Tensor:
        with self._context(model):
            return model(self._inputs(model, images)).float()

    def loss(self, model: nn.Module, batch) -> Tensor:
        images, labels = batch[0], batch[1]
        logits = self.logits(model, images)
        weights = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return nn.functional.cross_entropy(logits, labels.to(logits.device), weight=weights)

    @torch.no_grad()
    def predictions(self, model: nn.Module, data: Iterable) -> tuple[Tensor, Tensor]:
        """(predicted class, label) over ``data``, in eval mode."""
        predicted, labels = [], []
        with evaluating(model):
            for batch in data:
                predicted.append(self.logits(model, batch[0]).argmax(dim=1).cpu())
                labels.append(batch[1].cpu())
        return torch.cat(predicted), torch.cat(labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Iterable) -> Metrics:
        total_loss, correct, count = 0.0, 0, 0
        with evaluating(model):
            for batch in data:
                logits = self.logits(model, batch[0])
                labels = batch[1].to(logits.device)
                total_loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
                correct += int((logits.argmax(dim=1) == labels).sum())
                count += labels.shape[0]
        return Metrics(total_loss / max(1, count), correct / max(1, count))


class TwoCueTask(ClassificationTask):
    """The base model's task: a 2k-way head whose first k logits classify the
    shape and last k the texture of images where the two vary independently,
    so that the model learns both cues.  A texture label of -100 marks an
    untextured object (shape loss only).  Accuracy: shape and texture hits
    over the labels given."""

    def __init__(self, classes: int, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes

    def _split_loss(self, logits: Tensor, shapes: Tensor, textures: Tensor, reduction="mean"):
        k = self.classes
        total = (nn.functional.cross_entropy(logits[:, :k], shapes, reduction="sum")
                 + nn.functional.cross_entropy(logits[:, k:], textures, reduction="sum"))
        return total / shapes.shape[0] if reduction == "mean" else total

    def loss(self, model: nn.Module, batch) -> Tensor:
        images, shapes, textures = batch
        logits = self.logits(model, images)
        return self._split_loss(logits, shapes.to(logits.device), textures.to(logits.device))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Iterable) -> Metrics:
        total_loss, correct, count, labels = 0.0, 0, 0, 0
        k = self.classes
        with evaluating(model):
            for images, shapes, textures in data:
                logits = self.logits(model, images)
                shapes, textures = shapes.to(logits.device), textures.to(logits.device)
                total_loss += float(self._split_loss(logits, shapes, textures, "sum"))
                correct += int((logits[:, :k].argmax(1) == shapes).sum())
                correct += int((logits[:, k:].argmax(1) == textures).sum())
                count += shapes.shape[0]
                labels += shapes.shape[0] + int((textures >= 0).sum())
        return Metrics(total_loss / max(1, count), correct / max(1, labels))

    @torch.no_grad()
    def head_accuracies(self, model: nn.Module, data: Iterable) -> tuple[float, float]:
        """(shape head accuracy, texture head accuracy) on batches of (images, shapes[, textures])."""
        k = self.classes
        shape_hits = texture_hits = count = 0
        with evaluating(model):
            for batch in data:
                logits = self.logits(model, batch[0])
                shape_hits += int((logits[:, :k].argmax(1).cpu() == batch[1].cpu()).sum())
                texture_hits += int((logits[:, k:].argmax(1).cpu() == batch[-1].cpu()).sum())
                count += batch[1].shape[0]
        return shape_hits / max(1, count), texture_hits / max(1, count)
