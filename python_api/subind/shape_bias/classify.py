"""Decisions of a classifier on stimuli: the category with the highest score,
from a native head over the categories or from a 1000-class ImageNet head
aggregated to Geirhos' 16 categories."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from . import categories as G
from .evaluation import Decision
from .stimuli import Stimulus, batches


def decide(model: nn.Module, stimuli: Sequence[Stimulus], preprocess: Callable,
           class_names: Sequence[str], device: str = "cpu", batch_size: int = 64
           ) -> list[Decision]:
    """``class_names`` name the model's outputs in order; a 1000-way model is
    read as ImageNet and aggregated to the 16 categories."""
    model = model.eval().to(device)
    decisions = []
    with torch.inference_mode():
        for chunk, images in batches(stimuli, batch_size):
            logits = model(preprocess(images.to(device)))
            if logits.ndim != 2:
                raise ValueError(f"the model returned shape {tuple(logits.shape)}, "
                                 f"expected (batch, classes)")
            probabilities = logits.float().softmax(dim=1)
            names = class_names
            if probabilities.shape[1] == 1000 and len(class_names) != 1000:
                probabilities, names = G.aggregate_imagenet(probabilities), G.CATEGORIES
            elif probabilities.shape[1] != len(class_names):
                raise ValueError(f"the model has {probabilities.shape[1]} outputs but "
                                 f"{len(class_names)} class names were given")
            confidence, index = probabilities.max(dim=1)
            decisions += [Decision(s, names[i], float(c))
                          for s, i, c in zip(chunk, index.tolist(), confidence.tolist())]
    return decisions
