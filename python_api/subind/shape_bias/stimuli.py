"""Stimulus folders in Geirhos' layout and the images in them.

Cue-conflict images are ``<shape>/<shape><i>-<texture><j>.png``; silhouettes,
edge drawings and other single-cue sets are ``<shape>/<shape><i>.png``.
Category names are lower-case letters; the folder must agree with the name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CUE_CONFLICT = re.compile(r"^([a-z]+)(\d+)-([a-z]+)(\d+)$")
_SINGLE_CUE = re.compile(r"^([a-z]+)(\d+)$")


@dataclass(frozen=True)
class Stimulus:
    path: Path
    shape: str
    texture: Optional[str]   # None for single-cue images

    @property
    def same_class(self) -> bool:
        return self.texture == self.shape


def parse_name(path: Path) -> tuple[str, Optional[str]]:
    """File name → (shape category, texture category or None)."""
    stem = Path(path).stem
    match = _CUE_CONFLICT.match(stem)
    if match:
        return match.group(1), match.group(3)
    match = _SINGLE_CUE.match(stem)
    if match:
        return match.group(1), None
    raise ValueError(f"{path}: file name is neither <shape><i>-<texture><j> nor <shape><i>")


def scan(root: Path, categories: Optional[Sequence[str]] = None) -> list[Stimulus]:
    """Every image under ``root`` (sorted), checked against the layout and,
    when given, the category names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"stimulus folder {root} does not exist")
    known = set(categories) if categories is not None else None
    found = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        shape, texture = parse_name(path)
        if path.parent.name != shape:
            raise ValueError(f"{path}: shape {shape!r} in the name but folder "
                             f"{path.parent.name!r}")
        if known is not None:
            unknown = {shape, texture} - known - {None}
            if unknown:
                raise ValueError(f"{path}: unknown categor{'ies' if len(unknown) > 1 else 'y'} "
                                 f"{sorted(unknown)}; expected one of {sorted(known)}")
        found.append(Stimulus(path, shape, texture))
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return found


def read_image(path: Path) -> torch.Tensor:
    """(3, H, W) float32 in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except OSError as err:
        raise ValueError(f"{path}: not a readable image ({err})") from err
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """(batch, 3, H, W) in [0, 1] → (batch, 3, size, size), bicubic with antialiasing."""
    if images.shape[-2:] == (size, size):
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bicubic",
                                           align_corners=False, antialias=True).clamp(0, 1)


def batches(stimuli: Sequence[Stimulus], batch_size: int) -> Iterator[tuple[list, torch.Tensor]]:
    """(stimuli, images) in order; images of one batch must share a size."""
    for start in range(0, len(stimuli), batch_size):
        chunk = list(stimuli[start:start + batch_size])
        images = [read_image(s.path) for s in chunk]
        sizes = {tuple(im.shape) for im in images}
        if len(sizes) > 1:
            raise ValueError(f"images of different sizes {sorted(sizes)} near {chunk[0].path}")
        yield chunk, torch.stack(images)
