"""The vision experiment's tasks: classification of images in [0, 1]
(engine/classification.py) normalised with the synthetic images' statistics
or the model's own, and the base model's two-cue task."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from ...engine.classification import IGNORE_LABEL, Classification
from ...engine.training import Metrics, evaluating

MEAN, STD = 0.5, 0.25  # the synthetic images' normalisation


def image_classification(device: str, mean=MEAN, std=STD,
                         class_weights: Optional[Tensor] = None) -> Classification:
    """Classification of images in [0, 1]: normalised by ``mean``/``std``,
    under bf16 autocast on CUDA."""
    return Classification(autocast=torch.bfloat16 if device.startswith("cuda") else None,
                          mean=mean, std=std, class_weights=class_weights)


class TwoCueTask(Classification):
    """The base model's task: a 2k-way head whose first k logits classify the
    shape and last k the texture of images where the two vary independently,
    so that the model learns both cues.  A texture label IGNORE_LABEL marks an
    untextured object (IGNORE_LABEL: shape loss only).  Accuracy: shape and texture hits
    over the labels given."""

    def __init__(self, classes: int, device: str = "cpu"):
        base = image_classification(device)
        super().__init__(autocast=base.autocast, mean=base.mean, std=base.std)
        self.classes = classes

    def _split_loss(self, logits: Tensor, shapes: Tensor, textures: Tensor, reduction="mean"):
        k = self.classes
        total = (nn.functional.cross_entropy(logits[:, :k], shapes, reduction="sum")
                 + nn.functional.cross_entropy(logits[:, k:], textures, reduction="sum",
                                               ignore_index=IGNORE_LABEL))
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
