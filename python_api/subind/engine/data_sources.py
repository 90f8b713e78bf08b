"""Data for commands that take any model (``subind discover``): where the
samples come from, and the classification task they are scored with.

* ``imagefolder:DIR``   a torchvision ImageFolder (one folder per class), resized,
                        centre-cropped and normalised with the model's own
                        preprocessing (timm's data config) unless overridden;
* ``entry:MOD:FUNC``    ``MOD.FUNC()`` returning {"train": Dataset, "eval": Dataset
                        (optional), "task": a Task (optional)};
* ``experiment:NAME/SET`` a set an experiment offers (e.g. vision/pooled).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from .training import ScoresInputs, evaluating


@dataclass
class DataSpec:
    train: Dataset
    eval: Optional[Dataset] = None
    task: Optional[object] = None


def _image_transform(model: nn.Module, size: Optional[int], mean, std):
    from torchvision import transforms

    from .models import input_size

    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = size or (input_size(model) or (3, 224, 224))[-1]
    mean = tuple(mean or cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(std or cfg.get("std", (0.229, 0.224, 0.225)))
    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size),
                               transforms.ToTensor(), transforms.Normalize(mean, std)])


def load_rgb(path: str):
    """One image as RGB; a file PIL cannot decode (truncated, not an image) is
    an error naming it."""
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")
    except (OSError, ValueError) as err:  # PIL: UnidentifiedImageError, "truncated"
        raise ValueError(f"image {path} cannot be read ({err}); replace or remove it") from None


def image_folder(directory: Path, model: nn.Module, size=None, mean=None, std=None) -> Dataset:
    from torchvision.datasets import ImageFolder

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image folder {directory} does not exist")
    try:
        return ImageFolder(str(directory), transform=_image_transform(model, size, mean, std),
                           loader=load_rgb)
    except FileNotFoundError as err:  # no class folders, or no images in them
        raise FileNotFoundError(f"image folder {directory}: {err}") from None


def _entry(spec: str) -> DataSpec:
    from .models import call_entry_point

    value = call_entry_point(spec, "a dict of data sets")
    if not isinstance(value, dict) or "train" not in value:
        raise ValueError(f"{spec} must return a dict with 'train' (and optionally 'eval', "
                         f"'task'), got {type(value).__name__}")
    return DataSpec(value["train"], value.get("eval"), value.get("task"))


def resolve(spec: str, model: nn.Module, experiment_sets: Callable[[str, str], DataSpec],
            size=None, mean=None, std=None) -> DataSpec:
    """The data ``spec`` names (see module docstring)."""
    kind, _, rest = spec.partition(":")
    if kind == "imagefolder":
        return DataSpec(image_folder(Path(rest), model, size, mean, std))
    if kind == "entry":
        return _entry(rest)
    if kind == "experiment":
        name, _, which = rest.partition("/")
        return experiment_sets(name, which)
    raise ValueError(f"--data must be imagefolder:DIR, entry:MODULE:FUNCTION or "
                     f"experiment:NAME/SET, got {spec!r}")


def local_directory(spec: Optional[str]) -> Optional[Path]:
    """The directory a model or data spec reads its files from (``hf:DIR``,
    ``imagefolder:DIR``), else None: what a results manifest hashes."""
    kind, _, rest = (spec or "").partition(":")
    return Path(rest) if kind in ("hf", "imagefolder") and rest else None


def check_out_outside_data(out: Path, *specs: Optional[str]) -> None:
    """A results directory inside an image folder would become one of its
    classes on the next run: refused, naming both."""
    for spec in specs:
        folder = local_directory(spec)
        if folder is not None and spec.startswith("imagefolder:") and \
                Path(out).resolve().is_relative_to(folder.resolve()):
            raise ValueError(f"--out {out} lies inside the image folder of {spec}: a rerun would "
                             "read it as a class; put the results elsewhere")


def evaluation_split(data: DataSpec, spec: str, role: str) -> Dataset:
    """The held-out split of ``data`` where it has one, else its training
    split; an empty set is an error naming ``spec`` (never a silent fallback)."""
    chosen = data.eval if data.eval is not None else data.train
    if len(chosen) == 0:
        split = "evaluation" if data.eval is not None else "training"
        raise ValueError(f"{role} {spec}: its {split} split holds no samples")
    return chosen


def _first_samples(dataset: Dataset, count: int = 2):
    from torch.utils.data import default_collate

    if len(dataset) == 0:
        raise ValueError("holds no samples")
    return default_collate([dataset[i] for i in range(min(count, len(dataset)))])


def check_data_fits(model: nn.Module, task, train: Dataset, eval_set: Dataset, *,
                    model_spec: str, data_spec: str, eval_spec: Optional[str]) -> None:
    """Before anything is written: the training and evaluation data name the
    same classes in the same order (ImageFolder numbers classes by sorted
    folder name, so other folders shift every label), the model has an output
    for every class, and the model runs on two samples of each set (a model
    and data of different kinds fail here, named)."""
    train_classes = getattr(train, "classes", None)
    eval_classes = getattr(eval_set, "classes", None)
    if train_classes is not None and eval_classes is not None and train_classes != eval_classes:
        only_train = sorted(set(train_classes) - set(eval_classes))
        only_eval = sorted(set(eval_classes) - set(train_classes))
        raise ValueError(
            f"--eval-data {eval_spec} and --data {data_spec} name different classes (only in "
            f"--data: {only_train[:5]}, only in --eval-data: {only_eval[:5]}); class indices "
            "come from the sorted folder names, so both need the same class folders")
    with evaluating(model):
        for spec, dataset in ((data_spec, train), (eval_spec or data_spec, eval_set)):
            try:
                batch = _first_samples(dataset)
            except ValueError as err:
                raise ValueError(f"--data {spec}: {err}") from None
            with _named_failure(model_spec, spec):
                outputs = (task.logits(model, batch[0]) if isinstance(task, ScoresInputs)
                           and isinstance(batch, (list, tuple)) else None)
            classes = getattr(dataset, "classes", None)
            if outputs is not None and classes is not None and outputs.shape[-1] < len(classes):
                raise ValueError(
                    f"--model {model_spec} has {outputs.shape[-1]} outputs but --data {spec} "
                    f"has {len(classes)} classes; build the model with one output per class "
                    f"(e.g. --model-kwargs '{{\"num_classes\": {len(classes)}}}')")
            with _named_failure(model_spec, spec):
                task.loss(model, batch)


@contextlib.contextmanager
def _named_failure(model_spec: str, data_spec: str):
    with torch.no_grad():
        try:
            yield
        except Exception as err:  # the model's own error, whatever its kind
            raise ValueError(f"--model {model_spec} cannot run on --data {data_spec} "
                             f"({type(err).__name__}: {err}); are they of the same kind "
                             "(images, tokens) and shape?") from err
