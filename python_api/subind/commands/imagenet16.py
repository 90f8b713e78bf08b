"""`subind imagenet16 ROOT OUT`: 16-class ImageNet (+ the paper's balanced
subsets) from an ImageNet copy on disk (shape_bias/imagenet16.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from ..engine.options import MISSING

from ..shape_bias.imagenet16 import build


HELP = "build 16-class ImageNet (+ the paper's balanced subsets) from an ImageNet copy"


@dataclass
class ImageNet16Options:
    """Where ImageNet is, where the 16-class copy goes, and the subsets' sizes."""
    root: Annotated[Path, tyro.conf.Positional,
                     tyro.conf.arg(metavar="ROOT")] = MISSING
    """ImageNet (ImageFolder or Kaggle layout)"""
    out: Annotated[Path, tyro.conf.Positional,
                    tyro.conf.arg(metavar="OUT")] = MISSING
    """the 16-class copy (symbolic links unless --copy)"""
    discovery_per_class: int = 1000
    """discovery images per category"""
    selection_per_class: int = 96
    """held-out selection images per category"""
    seed: int = 0
    """seed of the subsets"""
    copy: bool = False
    """copy files instead of symlinking"""


OPTIONS = {"imagenet16": ImageNet16Options}


def run(parsed, argv) -> int:
    args = parsed.options
    if args.discovery_per_class < 1 or args.selection_per_class < 1:
        raise ValueError("--discovery-per-class and --selection-per-class must be >= 1")
    counts = build(args.root, args.out, args.discovery_per_class, args.selection_per_class,
                   args.seed, args.copy)
    totals = {s: sum(c[s] for c in counts["categories"].values())
              for s in ("train", "discovery", "selection", "val")}
    print(f"16-class ImageNet ({counts['layout']} layout) → {args.out}: {totals}")
    if counts["short_of_discovery_target"]:
        print(f"fewer than {args.discovery_per_class} discovery images for "
              f"{counts['short_of_discovery_target']}")
    print(f"next: subind mean-pool {args.out}/discovery {args.out}/discovery-pooled --method sam "
          f"--sam-checkpoint SAM.pth (and the same for selection and val)")
    return 0
