"""16-class ImageNet (Geirhos et al.; the paper's §5.2 data) from an ImageNet
copy on disk, plus the paper's class-balanced subsets.

Reads either layout:

* ImageFolder:  ``ROOT/train/<wnid>/*.JPEG``, ``ROOT/val/<wnid>/*.JPEG``
* Kaggle (ILSVRC CLS-LOC): ``ROOT/ILSVRC/Data/CLS-LOC/train/<wnid>/*.JPEG``,
  ``ROOT/ILSVRC/Data/CLS-LOC/val/*.JPEG`` with ``ROOT/LOC_val_solution.csv``

and writes, as symbolic links (or copies) named ``<wnid>_<file>``:

* ``OUT/train/<category>/``      every training image of the category's WNIDs,
                                 minus the selection subset
* ``OUT/discovery/<category>/``  a balanced random subset of ``train`` (to be
                                 mean-pooled for discovery and the data mixture)
* ``OUT/selection/<category>/``  a balanced subset held out of ``train`` for
                                 evaluation and model selection
* ``OUT/val/<category>/``        the ImageNet validation images (the test set)
* ``OUT/imagenet16.json``        the counts and the seed
"""
from __future__ import annotations

import csv
import os
import random
import shutil
from pathlib import Path

from ..engine.files import atomic_write_json
from .categories import CATEGORIES, wnid_to_category

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def find_layout(root: Path) -> dict:
    """{'train': dir of WNID folders, 'val': [(path, wnid)]} for either layout."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet folder {root} does not exist")
    kaggle = root / "ILSVRC" / "Data" / "CLS-LOC"
    if (root / "train").is_dir():
        val = []
        if (root / "val").is_dir():
            val = [(p, d.name) for d in sorted((root / "val").iterdir()) if d.is_dir()
                   for p in _images(d)]
        return {"train": root / "train", "val": val, "layout": "imagefolder"}
    if (kaggle / "train").is_dir():
        solution = root / "LOC_val_solution.csv"
        val = []
        if solution.is_file():
            with open(solution, newline="") as f:
                for row in csv.DictReader(f):
                    wnid = row["PredictionString"].split()[0]
                    val.append((kaggle / "val" / f"{row['ImageId']}.JPEG", wnid))
        return {"train": kaggle / "train", "val": sorted(val), "layout": "kaggle"}
    raise FileNotFoundError(f"{root}: neither ImageFolder (train/<wnid>/) nor Kaggle "
                            f"(ILSVRC/Data/CLS-LOC/train/<wnid>/) ImageNet layout")


def _place(source: Path, target: Path, copy: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    if copy:
        shutil.copy2(source, target)
    else:
        os.symlink(os.path.abspath(source), target)


def build(root: Path, out: Path, discovery_per_class: int = 1000,
          selection_per_class: int = 96, seed: int = 0, copy: bool = False) -> dict:
    """Write the folders of the module docstring; returns the counts."""
    layout = find_layout(root)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; build 16-class ImageNet into a new folder")
    category_of = wnid_to_category()
    by_category: dict[str, list[Path]] = {c: [] for c in CATEGORIES}
    for folder in sorted(p for p in layout["train"].iterdir() if p.is_dir()):
        if folder.name in category_of:
            by_category[category_of[folder.name]] += _images(folder)
    empty = [c for c, files in by_category.items() if not files]
    if empty:
        raise ValueError(f"{root}: no training images for {empty} (expected WNID folders such "
                         f"as {[next(iter(w for w, c in category_of.items() if c == e)) for e in empty][:3]})")
    rng = random.Random(seed)
    counts = {"layout": layout["layout"], "seed": seed, "categories": {}}
    for category, files in by_category.items():
        shuffled = files[:]
        rng.shuffle(shuffled)
        selection = shuffled[:selection_per_class]
        train = shuffled[selection_per_class:]
        discovery = train[:discovery_per_class]
        for split, chosen in (("train", train), ("discovery", discovery),
                              ("selection", selection)):
            for path in chosen:
                _place(path, out / split / category / f"{path.parent.name}_{path.name}", copy)
        counts["categories"][category] = {"train": len(train), "discovery": len(discovery),
                                          "selection": len(selection), "val": 0}
    for path, wnid in layout["val"]:
        category = category_of.get(wnid)
        if category is not None:
            _place(path, out / "val" / category / f"{wnid}_{path.name}", copy)
            counts["categories"][category]["val"] += 1
    short = [c for c, n in counts["categories"].items() if n["discovery"] < discovery_per_class]
    counts["short_of_discovery_target"] = short
    atomic_write_json(out / "imagenet16.json", counts)
    return counts
