"""Faithfulness controls for a discovery.  Mask search can reach good scores
where there is nothing to find — on tasks with shuffled labels and in models
with random weights — so a subnetwork means something only when its accuracy
stands above what the same search reaches on those.  The controls run the same
discovery (settings, data sizes, schedule) twice more:

* **random weights**: the model with every parameter replaced by Gaussian
  values of the same mean and standard deviation as the trained one (any
  architecture, no knowledge of its initialiser needed), scored on the real
  task;
* **shuffled labels**: the trained model on the training data with the labels
  permuted across samples, scored on evaluation data whose labels are permuted
  the same way (a task with no structure to find).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

CONTROLS = ("random_weights", "shuffled_labels")


@torch.no_grad()
def random_weight_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` whose every parameter is redrawn from a Gaussian with
    the original's mean and standard deviation (constant tensors, such as norm
    scales, stay as they are)."""
    out = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    for param in out.parameters():
        values = param.detach().double()
        std = float(values.std()) if values.numel() > 1 else 0.0
        fresh = torch.randn(param.shape, generator=generator, dtype=torch.float64)
        param.copy_((fresh * std + float(values.mean())).to(param.dtype))
    return out


class ShuffledLabels(Dataset):
    """``dataset`` with each sample's label taken from another sample (a fixed
    permutation from ``seed``).  Samples are ``(input, label, …)`` pairs, or
    token rows whose last token is the label (the last-token tasks)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item, donor = self.dataset[i], self.dataset[int(self.order[i])]
        if isinstance(item, (tuple, list)) and len(item) >= 2:
            return (item[0], donor[1], *item[2:])
        if isinstance(item, Tensor) and item.dim() == 1:
            row = item.clone()
            row[-1] = donor[-1]
            return row
        raise TypeError(f"shuffled-label control: samples must be (input, label, …) or token "
                        f"rows, got {type(item).__name__}")

    # ImageFolder-style datasets name their classes; the control keeps them.
    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def controls_table(accuracy: float, density: float, controls: Optional[dict],
                   not_run: Optional[dict] = None) -> list[str]:
    """Markdown lines: the subnetwork's accuracy beside each control's and its
    margin over it, a line for each control not run (``not_run``: why), or a
    line saying the controls were not run at all."""
    if not controls and not not_run:
        return ["faithfulness controls: not run (found with --no-controls, or by a version "
                "without them): nothing shows that the search could not reach this accuracy "
                "on a random-weight model or on shuffled labels"]
    lines = ["faithfulness controls (the same discovery on a random-weight copy and on "
             "shuffled labels; engine/controls.py):", "",
             "| run | accuracy | density | the subnetwork's margin |", "|---|---|---|---|",
             f"| the subnetwork | {accuracy:.4f} | {density:.4f} | |"]
    lines += [f"| {name.replace('_', ' ')} | {c['accuracy']:.4f} | {c['density']:.4f} | "
              f"{accuracy - c['accuracy']:+.4f} |" for name, c in (controls or {}).items()]
    lines += [f"| {name.replace('_', ' ')} | – | – | {why} |"
              for name, why in (not_run or {}).items()]
    return lines
