"""Shape-bias metrics on cue-conflict decisions (Geirhos et al. 2019) and the
Subtask Induction paper's cue-conflict "accuracy" and "robustness".

For cue-conflict images (shape category ≠ texture category):

* shape bias      = shape hits / (shape hits + texture hits)
* shape accuracy  = shape hits / images
* texture rate    = texture hits / images

Geirhos excludes the images whose shape and texture are the same category;
so do these three.  The paper's two numbers (§5.3) are reported both ways:

* accuracy   = images classified by their shape / images
* robustness = 1 − images classified by a *misleading* texture / images
  (a same-class image is never misled, its texture agrees with its shape)
"""
from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..engine.files import atomic_write_text
from .stimuli import Stimulus


@dataclass(frozen=True)
class Decision:
    stimulus: Stimulus
    decision: str
    confidence: float = float("nan")

    @property
    def shape_hit(self) -> bool:
        return self.decision == self.stimulus.shape

    @property
    def texture_hit(self) -> bool:
        return self.stimulus.texture is not None and self.decision == self.stimulus.texture

    @property
    def misled(self) -> bool:
        return self.texture_hit and not self.stimulus.same_class


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def conflicting(decisions: Sequence[Decision]) -> list[Decision]:
    """The cue-conflict decisions whose shape and texture categories differ."""
    return [d for d in decisions if d.stimulus.texture is not None and not d.stimulus.same_class]


def shape_bias_of(decisions: Sequence[Decision]) -> float:
    conflict = conflicting(decisions)
    shape = sum(d.shape_hit for d in conflict)
    texture = sum(d.texture_hit for d in conflict)
    return _ratio(shape, shape + texture)


# Fewer decisive images (a shape or a texture hit) than this give no interval:
# resampling one or two decisions yields a "95 % interval" that means nothing.
MIN_INTERVAL_DECISIONS = 10


def bootstrap_interval(decisions: Sequence[Decision], samples: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the shape bias over the conflict images; NaN
    (written as null) with fewer than MIN_INTERVAL_DECISIONS decisive images."""
    conflict = conflicting(decisions)
    if sum(d.shape_hit or d.texture_hit for d in conflict) < MIN_INTERVAL_DECISIONS:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    values = sorted(v for v in (shape_bias_of(rng.choices(conflict, k=len(conflict)))
                                for _ in range(samples)) if v == v)
    if not values:
        return float("nan"), float("nan")
    low = values[int((1 - level) / 2 * (len(values) - 1))]
    high = values[int((1 + level) / 2 * (len(values) - 1))]
    return low, high


def summarize(decisions: Sequence[Decision], categories: Sequence[str],
              bootstrap: int = 1000) -> dict:
    """All metrics of the module docstring, per category too."""
    cue = [d for d in decisions if d.stimulus.texture is not None]
    if not cue:
        raise ValueError("no cue-conflict images (<shape><i>-<texture><j>) among the decisions")
    conflict = conflicting(cue)
    shape_hits = sum(d.shape_hit for d in conflict)
    texture_hits = sum(d.texture_hit for d in conflict)
    low, high = (bootstrap_interval(decisions, bootstrap) if bootstrap
                 else (float("nan"), float("nan")))
    per_category = {}
    for c in categories:
        mine = [d for d in conflict if d.stimulus.shape == c]
        s, t = sum(d.shape_hit for d in mine), sum(d.texture_hit for d in mine)
        per_category[c] = {"images": len(mine), "shape_hits": s, "texture_hits": t,
                           "shape_bias": _ratio(s, s + t)}
    return {
        "images": len(cue), "conflict_images": len(conflict),
        "same_class_images": len(cue) - len(conflict),
        "shape_hits": shape_hits, "texture_hits": texture_hits,
        "shape_bias": _ratio(shape_hits, shape_hits + texture_hits),
        "shape_bias_interval": [low, high], "bootstrap_samples": bootstrap,
        "shape_accuracy": _ratio(shape_hits, len(conflict)),
        "texture_rate": _ratio(texture_hits, len(conflict)),
        "accuracy": _ratio(shape_hits, len(conflict)),
        "robustness": 1 - _ratio(sum(d.misled for d in conflict), len(conflict)),
        "accuracy_with_same_class": _ratio(sum(d.shape_hit for d in cue), len(cue)),
        "robustness_with_same_class": 1 - _ratio(sum(d.misled for d in cue), len(cue)),
        "per_category": per_category,
    }


def single_cue_accuracy(decisions: Sequence[Decision]) -> float:
    """Accuracy on silhouettes, edges and other ``<shape><i>`` images."""
    single = [d for d in decisions if d.stimulus.texture is None]
    return _ratio(sum(d.shape_hit for d in single), len(single))


def write_decisions(decisions: Sequence[Decision], path: Path, root: Optional[Path] = None) -> Path:
    """One CSV row per image, written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "shape", "texture", "same_class", "decision", "confidence",
                     "shape_hit", "texture_hit"])
    for d in decisions:
        image = d.stimulus.path.relative_to(root) if root else d.stimulus.path
        writer.writerow([str(image), d.stimulus.shape, d.stimulus.texture or "",
                         int(d.stimulus.same_class), d.decision, f"{d.confidence:.6f}",
                         int(d.shape_hit), int(d.texture_hit)])
    atomic_write_text(Path(path), buffer.getvalue())
    return Path(path)


def plot_per_category(results: dict[str, dict], categories: Sequence[str], path: Path,
                      title: str = "") -> Path:
    """Geirhos-style figure: one row per category, the fraction of shape
    decisions (left, 1) against texture decisions (right, 0), one marker per
    model and a vertical line at each model's overall shape bias."""
    from ..engine import report as R

    plt = R.pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 0.32 * len(categories) + 1.6))
    markers = "oDs^v<>ph*"
    for i, (label, summary) in enumerate(results.items()):
        values = [summary["per_category"][c]["shape_bias"] for c in categories]
        color = f"C{i}"
        ax.plot(values, range(len(categories)), linestyle="none", marker=markers[i % 10],
                color=color, label=f"{label} ({summary['shape_bias']:.2f})")
        ax.axvline(summary["shape_bias"], color=color, linewidth=1.2, alpha=0.7)
    ax.set_yticks(range(len(categories)), list(categories))
    ax.set_xlim(1.02, -0.02)  # Geirhos plots shape on the left
    ax.set_xlabel("fraction of 'shape' decisions")
    top = ax.secondary_xaxis("top", functions=(lambda x: 1 - x, lambda x: 1 - x))
    top.set_xlabel("fraction of 'texture' decisions")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.18), ncol=2, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return R.save_figure(fig, path)
