"""Shape-only images by mean pooling (paper §5.1): segment an image, then
fill every segment with its mean colour, which erases local texture and keeps
the segments' outlines.

Segmenters: Segment Anything (optional ``segment-anything`` package and a
checkpoint the user has), scikit-image SLIC and Felzenszwalb, or
ground-truth masks.  Overlapping masks (SAM's) become one partition by the
paper's paint order: the largest mask is painted first and smaller ones are
painted over it, masks under ``min_area`` pixels are dropped, and pixels no
mask covers form one segment of their own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

SEGMENTERS = ("slic", "felzenszwalb", "sam", "masks")


def paint_masks(masks: Sequence[np.ndarray], shape: tuple[int, int],
                min_area: int = 100) -> np.ndarray:
    """Boolean masks → an (H, W) int label map: the largest first, smaller
    ones painted over it; uncovered pixels get label 0, masks 1.."""
    labels = np.zeros(shape, dtype=np.int64)
    kept = [m for m in masks if m.shape == tuple(shape) and m.sum() >= min_area]
    for wrong in (m for m in masks if m.shape != tuple(shape)):
        raise ValueError(f"mask of shape {wrong.shape} for an image of shape {tuple(shape)}")
    for label, mask in enumerate(sorted(kept, key=lambda m: -int(m.sum())), start=1):
        labels[mask] = label
    return labels


def fill_segments(image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(C, H, W) image, (H, W) integer labels → every pixel replaced by the
    mean colour of its segment."""
    if labels.shape != image.shape[1:]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match image {tuple(image.shape)}")
    flat = labels.reshape(-1).long()
    _, index = torch.unique(flat, return_inverse=True)
    count = torch.bincount(index).clamp(min=1).to(image.dtype)
    pixels = image.reshape(image.shape[0], -1)
    sums = torch.zeros(image.shape[0], count.numel(), dtype=image.dtype).index_add_(1, index,
                                                                                     pixels)
    return (sums / count)[:, index].reshape(image.shape)


def slic_labels(image: np.ndarray, segments: int = 64, compactness: float = 10.0) -> np.ndarray:
    from skimage.segmentation import slic

    return slic(image, n_segments=segments, compactness=compactness, start_label=0,
                channel_axis=-1)


def felzenszwalb_labels(image: np.ndarray, scale: float = 100.0, sigma: float = 0.8,
                        min_size: int = 50) -> np.ndarray:
    from skimage.segmentation import felzenszwalb

    return felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)


def sam_segmenter(checkpoint: Path, model_type: str = "vit_h", device: str = "cpu",
                  points_per_side: int = 16, min_area: int = 100) -> Callable:
    """The paper's setting: a 16×16 grid of point prompts plus one level of
    2×2 crops, masks under ``min_area`` px dropped, painted largest first."""
    try:
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
    except ImportError:
        raise ImportError("SAM pooling needs the optional `segment-anything` package "
                          "(pip install subind-fast[sam]) and a checkpoint") from None
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"SAM checkpoint {checkpoint} does not exist")
    sam = sam_model_registry[model_type](checkpoint=str(checkpoint)).to(device)
    generator = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side, crop_n_layers=1,
                                          min_mask_region_area=min_area)

    def labels(image: np.ndarray) -> np.ndarray:
        uint8 = (image * 255).round().astype(np.uint8)
        masks = [m["segmentation"] for m in generator.generate(uint8)]
        return paint_masks(masks, image.shape[:2], min_area)

    return labels


def segmenter(method: str, sam_checkpoint: Optional[Path] = None, sam_model: str = "vit_h",
              device: str = "cpu", segments: int = 64) -> Callable[[np.ndarray], np.ndarray]:
    """(H, W, 3) float image → (H, W) labels, for ``method`` in slic | felzenszwalb | sam."""
    if method == "slic":
        return lambda image: slic_labels(image, segments)
    if method == "felzenszwalb":
        return felzenszwalb_labels
    if method == "sam":
        if sam_checkpoint is None:
            raise ValueError("--method sam needs --sam-checkpoint PATH")
        return sam_segmenter(sam_checkpoint, sam_model, device)
    raise ValueError(f"method must be one of {SEGMENTERS[:3]} (or 'masks' with --masks DIR), "
                     f"got {method!r}")


def mask_labels(mask_path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask image (one grey level or colour per segment) → labels."""
    from PIL import Image

    if not mask_path.is_file():
        raise FileNotFoundError(f"no ground-truth mask {mask_path}")
    with Image.open(mask_path) as m:
        array = np.asarray(m.convert("RGB"))
    if array.shape[:2] != tuple(shape):
        raise ValueError(f"{mask_path}: mask {array.shape[:2]} does not match image {shape}")
    _, labels = np.unique(array.reshape(-1, 3), axis=0, return_inverse=True)
    return labels.reshape(shape)


def write_png(image: torch.Tensor, path: Path) -> Path:
    """(3, H, W) in [0, 1] → lossless PNG, atomically."""
    from PIL import Image

    from ..engine.files import atomic_write

    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return atomic_write(Path(path), lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def preview_grid(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], path: Path,
                 size: int = 128) -> Path:
    """Before (top row) / after (bottom row) images side by side, one PNG."""
    resized = [[torch.nn.functional.interpolate(im[None], size=(size, size), mode="nearest")[0]
                for im in pair] for pair in pairs]
    top = torch.cat([p[0] for p in resized], dim=2)
    bottom = torch.cat([p[1] for p in resized], dim=2)
    return write_png(torch.cat([top, bottom], dim=1), path)


def mean_pool_folder(source: Path, target: Path, labels_of: Callable[[Path, np.ndarray],
                     np.ndarray], preview: int = 8, progress: bool = False) -> int:
    """Every image under ``source`` → its mean-pooled PNG at the same relative
    path under ``target``; ``preview`` pairs in ``target/preview.png``."""
    return mean_pool(pooled_paths(source, target, preview), target, labels_of, preview,
                     progress)


def mean_pool(outputs: dict[Path, Path], target: Path,
              labels_of: Callable[[Path, np.ndarray], np.ndarray], preview: int = 8,
              progress: bool = False) -> int:
    """Each image of ``outputs`` ({source image: PNG}, from ``pooled_paths``)
    mean-pooled into its PNG; ``preview`` pairs in ``target/preview.png``."""
    from tqdm.auto import tqdm

    from .stimuli import read_image

    pairs = []
    for path, output in tqdm(outputs.items(), disable=None if progress else True,
                             desc="mean pooling"):  # None: bars only on a terminal
        image = read_image(path)
        labels = labels_of(path, image.permute(1, 2, 0).numpy())
        pooled = fill_segments(image, torch.from_numpy(np.asarray(labels)))
        write_png(pooled, output)
        if len(pairs) < preview:
            pairs.append((image, pooled))
    if pairs:
        preview_grid(pairs, Path(target) / PREVIEW)
    return len(outputs)


PREVIEW = "preview.png"


def pooled_paths(source: Path, target: Path, preview: int) -> dict[Path, Path]:
    """{source image: its PNG under ``target``}, checked before anything is
    written: the folders do not overlap (the originals are never overwritten
    or pooled twice), and no two images — ``x.jpg`` and ``x.png`` — nor an
    image and the preview map to one file."""
    from .stimuli import IMAGE_SUFFIXES

    source, target = Path(source), Path(target)
    if not source.is_dir():
        raise FileNotFoundError(f"image folder {source} does not exist")
    inside = [(a, b) for a, b in ((target, source), (source, target))
              if a.resolve() == b.resolve() or b.resolve() in a.resolve().parents]
    if inside:
        raise ValueError(f"target {target} and source {source} overlap; the pooled images must "
                         "go to a folder outside the originals (and not around them)")
    paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images under {source}")
    outputs, claimed = {}, {}
    if preview:
        claimed[target / PREVIEW] = "the preview (--preview)"
    for path in paths:
        output = (target / path.relative_to(source)).with_suffix(".png")
        if output in claimed:
            raise ValueError(f"{path} and {claimed[output]} would both be written to {output}; "
                             "rename one" + (" or pass --preview 0"
                                             if output.name == PREVIEW else ""))
        claimed[output] = path
        outputs[path] = output
    return outputs
