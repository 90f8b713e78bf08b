"""A seeded procedural stand-in for 16-class ImageNet that runs on a CPU:
16 shape classes × 16 texture classes at 32×32 px.

An image is one object — a shape class's silhouette at a random size,
rotation and position — filled with a texture class's spatial pattern in two
random colours, on a plain background of a random colour.  Texture classes
differ only in spatial pattern (colours are drawn independently of the
class), so neither the object's nor the image's mean colour says anything
about the texture class; only the silhouette says anything about the shape.

Class ``k`` is shape ``k`` together with texture ``k``.  The sets the
experiment uses (:func:`make_set`):

* ``aligned``      shape and texture agree (ambiguous training data, like ImageNet)
* ``independent``  shape and texture drawn independently (base-model training:
                   it learns both cues)
* ``pooled``       independent images with each true segment (object,
                   background) filled with its mean colour: shape only
* ``conflict``     shape ≠ texture (cue-conflict evaluation)

Labels are the shape class; ``textures`` holds the texture class.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SIZE = 32
SHAPES = ("arrow", "cross", "crescent", "diamond", "disk", "ell", "frame", "heart",
          "hexagon", "hourglass", "ring", "semicircle", "square", "star", "tee", "triangle")
TEXTURES = ("hstripes", "vstripes", "diagonal", "antidiagonal", "checker", "dots", "grid",
            "noise", "blobs", "rings", "zigzag", "waves", "plaid", "bricks", "speckles",
            "wide")
CLASS_NAMES = SHAPES  # class k: shape k with texture k
KINDS = ("aligned", "independent", "pooled", "conflict")


def _polygon(x, y, vertices) -> np.ndarray:
    """Even-odd point-in-polygon test on coordinate grids."""
    inside = np.zeros_like(x, dtype=bool)
    n = len(vertices)
    for i in range(n):
        (x1, y1), (x2, y2) = vertices[i], vertices[(i + 1) % n]
        crosses = (y1 > y) != (y2 > y)
        at = (x2 - x1) * (y - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= crosses & (x < at)
    return inside


def _regular(n: int, radius: float = 1.0, phase: float = 0.0):
    return [(radius * np.cos(phase + 2 * np.pi * i / n), radius * np.sin(phase + 2 * np.pi * i / n))
            for i in range(n)]


def _star():
    points = []
    for i in range(10):
        r = 1.0 if i % 2 == 0 else 0.42
        a = -np.pi / 2 + np.pi * i / 5
        points.append((r * np.cos(a), r * np.sin(a)))
    return points


def shape_mask(shape: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Silhouette of shape class ``shape`` on object coordinates (unit size)."""
    name = SHAPES[shape]
    r = np.hypot(x, y)
    ax, ay = np.abs(x), np.abs(y)
    if name == "disk":
        return r <= 0.95
    if name == "ring":
        return (r <= 1.0) & (r >= 0.55)
    if name == "square":
        return (ax <= 0.8) & (ay <= 0.8)
    if name == "frame":
        return (ax <= 0.9) & (ay <= 0.9) & ~((ax <= 0.5) & (ay <= 0.5))
    if name == "diamond":
        return ax + ay <= 1.0
    if name == "cross":
        return ((ax <= 0.3) & (ay <= 1.0)) | ((ay <= 0.3) & (ax <= 1.0))
    if name == "triangle":
        return _polygon(x, y, [(0, -1.0), (0.95, 0.75), (-0.95, 0.75)])
    if name == "hexagon":
        return _polygon(x, y, _regular(6, 0.95))
    if name == "star":
        return _polygon(x, y, _star())
    if name == "crescent":
        return (r <= 1.0) & (np.hypot(x - 0.45, y) > 0.75)
    if name == "semicircle":
        return (r <= 1.0) & (y >= -0.15)
    if name == "ell":
        return ((x >= -0.8) & (x <= -0.25) & (ay <= 0.95)) | ((y >= 0.4) & (y <= 0.95) & (ax <= 0.8))
    if name == "tee":
        return ((y >= -0.95) & (y <= -0.4) & (ax <= 0.9)) | ((ax <= 0.28) & (y >= -0.95) & (y <= 0.95))
    if name == "hourglass":
        return (ay <= 0.95) & (ax <= 0.1 + 0.8 * ay)
    if name == "heart":
        lobes = (np.hypot(x - 0.45, y + 0.35) <= 0.5) | (np.hypot(x + 0.45, y + 0.35) <= 0.5)
        return lobes | _polygon(x, y, [(-0.93, -0.2), (0.93, -0.2), (0, 0.95)])
    if name == "arrow":
        return (((x >= -0.95) & (x <= 0.15) & (ay <= 0.25))
                | _polygon(x, y, [(0.1, -0.75), (0.95, 0), (0.1, 0.75)]))
    raise AssertionError(name)


def texture_pattern(texture: int, rng: np.random.Generator) -> np.ndarray:
    """(SIZE, SIZE) pattern in [0, 1] of texture class ``texture`` at a random phase."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    ox, oy = rng.uniform(0, 8, size=2)
    x, y = xx + ox, yy + oy
    name = TEXTURES[texture]
    if name == "hstripes":
        return (np.floor(y / 2) % 2).astype(float)
    if name == "vstripes":
        return (np.floor(x / 2) % 2).astype(float)
    if name == "diagonal":
        return (np.floor((x + y) / 2.5) % 2).astype(float)
    if name == "antidiagonal":
        return (np.floor((x - y + 64) / 2.5) % 2).astype(float)
    if name == "checker":
        return ((np.floor(x / 2) + np.floor(y / 2)) % 2).astype(float)
    if name == "dots":
        return (np.hypot(x % 4 - 1.5, y % 4 - 1.5) <= 1.0).astype(float)
    if name == "grid":
        return ((x % 5 < 1) | (y % 5 < 1)).astype(float)
    if name == "noise":
        return (rng.random((SIZE, SIZE)) < 0.5).astype(float)
    if name == "blobs":
        coarse = rng.random((SIZE // 4 + 1, SIZE // 4 + 1))
        return (np.kron(coarse, np.ones((4, 4)))[:SIZE, :SIZE] > 0.5).astype(float)
    if name == "rings":
        cx, cy = rng.uniform(0, SIZE, size=2)
        return (np.floor(np.hypot(xx - cx, yy - cy) / 2) % 2).astype(float)
    if name == "zigzag":
        return (np.floor((y + np.abs((x % 6) - 3)) / 2) % 2).astype(float)
    if name == "waves":
        return (np.sin(x / 1.3 + 2.5 * np.sin(y / 3.0)) > 0).astype(float)
    if name == "plaid":
        return (((x % 6) < 2) ^ ((y % 6) < 2)).astype(float)
    if name == "bricks":
        row = np.floor(y / 3)
        return ((y % 3 < 1) | (((x + 3 * (row % 2)) % 6) < 1)).astype(float)
    if name == "speckles":
        return (rng.random((SIZE, SIZE)) < 0.15).astype(float)
    if name == "wide":
        return (np.floor((x + 0.5 * y) / 4) % 2).astype(float)
    raise AssertionError(name)


def _colours(rng: np.random.Generator, contrast: float):
    """Background and the texture's two colours, all of random hue.  The two
    texture colours differ strongly (the pattern is salient); the object's
    mean differs from the background by ``contrast`` in every channel's
    direction, so the silhouette is fainter than the texture but survives
    mean pooling."""
    background = rng.uniform(0.25, 0.75, 3)
    sign = rng.choice([-1.0, 1.0])
    mean = np.clip(background + sign * contrast * rng.uniform(0.7, 1.3, 3), 0.2, 0.8)
    spread = rng.uniform(0.3, 0.45) * rng.choice([-1.0, 1.0], size=3)
    return background, np.clip(mean - spread, 0, 1), np.clip(mean + spread, 0, 1)


@dataclass
class ImageSet:
    images: torch.Tensor      # (n, 3, SIZE, SIZE) float32 in [0, 1]
    shapes: torch.Tensor      # (n,) shape class = label
    textures: torch.Tensor    # (n,) texture class
    masks: torch.Tensor       # (n, SIZE, SIZE) bool, the object's true segment

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class Salience:
    """How hard the shape is to see: object size (fraction of the half image),
    rotation range (± degrees), position jitter (± px) and the brightness
    difference between object and background."""
    scale: tuple[float, float] = (0.5, 0.8)
    rotation: float = 180.0
    jitter: float = 4.0
    contrast: float = 0.12


DEFAULT_SALIENCE = Salience()


def render(shape: int, texture: int, rng: np.random.Generator,
           salience: Salience = DEFAULT_SALIENCE) -> tuple[np.ndarray, np.ndarray]:
    """One image (3, SIZE, SIZE) and its object mask."""
    half = SIZE / 2
    s = rng.uniform(*salience.scale) * half
    angle = np.deg2rad(rng.uniform(-salience.rotation, salience.rotation))
    cx, cy = half + rng.uniform(-salience.jitter, salience.jitter, size=2)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64) + 0.5
    dx, dy = (xx - cx) / s, (yy - cy) / s
    ox = np.cos(angle) * dx + np.sin(angle) * dy
    oy = -np.sin(angle) * dx + np.cos(angle) * dy
    mask = shape_mask(shape, ox, oy)
    pattern = texture_pattern(texture, rng)
    background, a, b = _colours(rng, salience.contrast)
    fill = a[:, None, None] * (1 - pattern) + b[:, None, None] * pattern
    image = np.where(mask[None], fill, background[:, None, None])
    return image.astype(np.float32), mask


def mean_pool_with_masks(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Each image's true segments (object, background) filled with their mean colour."""
    from ...shape_bias.pooling import fill_segments

    return torch.stack([fill_segments(im, m.long()) for im, m in zip(images, masks)])


def _pairs(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    classes = len(SHAPES)
    shapes = np.arange(n) % classes  # balanced
    rng.shuffle(shapes)
    if kind == "aligned":
        return shapes, shapes.copy()
    textures = rng.integers(0, classes, size=n)
    if kind == "conflict":
        textures = (shapes + rng.integers(1, classes, size=n)) % classes
    return shapes, textures


def make_set(kind: str, n: int, seed: int, salience: Salience = DEFAULT_SALIENCE) -> ImageSet:
    """``n`` images of ``kind`` (see module docstring), reproducible from ``seed``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    shapes, textures = _pairs(kind, n, rng)
    images = np.zeros((n, 3, SIZE, SIZE), np.float32)
    masks = np.zeros((n, SIZE, SIZE), bool)
    for i, (s, t) in enumerate(zip(shapes, textures)):
        images[i], masks[i] = render(int(s), int(t), rng, salience)
    out = ImageSet(torch.from_numpy(images), torch.from_numpy(shapes).long(),
                   torch.from_numpy(textures).long(), torch.from_numpy(masks))
    if kind == "pooled":
        out.images = mean_pool_with_masks(out.images, out.masks)
    return out


def write_geirhos_layout(images: ImageSet, folder, names=CLASS_NAMES) -> list:
    """Save as ``<shape>/<shape><i>-<texture><i>.png`` (lossless PNG) for `subind
    shape-bias`; returns the :class:`~.stimuli.Stimulus` of each image in order."""
    from pathlib import Path

    from ...shape_bias.pooling import write_png
    from ...shape_bias.stimuli import Stimulus

    folder = Path(folder)
    counters: dict[tuple[int, int], int] = {}
    stimuli = []
    for image, s, t in zip(images.images, images.shapes.tolist(), images.textures.tolist()):
        i = counters.get((s, t), 0) + 1
        counters[(s, t)] = i
        path = folder / names[s] / f"{names[s]}{i}-{names[t]}{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            write_png(image, path)
        stimuli.append(Stimulus(path, names[s], names[t]))
    return stimuli
