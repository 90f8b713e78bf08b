"""Would another seed find the same weights?  The seed-stability part of a
discovery run with several seeds (`subind discover --seeds 0,1,2,…`, and an
experiment's discovery stage with --discovery-seeds, engine/discovery_seeds.py),
written and read in one place.

Repeated discovery can return different but equally good subnetworks, so an
overlap only means something against what chance gives: each pair of seeds'
hard masks is compared by IoU and intersection over minimum, beside the IoU
two random masks with the same number of weights in every parameter would
have in expectation (subind_fast.analysis.chance_overlap).  The weights every
seed kept (the core) and more than half kept (the majority) are scored alone
— every other masked weight zeroed — on the discovery's evaluation data, and
so is each seed's own subnetwork, so the three compare like with like (the
accuracy a discovery reports may rest on state it trained besides the masks:
BatchNorm statistics, which the caller's scoring re-estimates).

Statistics: per seed, its mean IoU with the other seeds and its mean chance
IoU; the table gives their means over seeds with 95 % bootstrap intervals and
the IoU − chance difference paired by seed with its interval and sign test
(engine/statistics.py).  The per-seed values share pairs, so the intervals
are a seed-level summary, not independent draws.

OUT/seed-<k>/             each seed's discovery directory (discovery_results.py; an
                          experiment's stage keeps OUT/seed-<k>.safetensors instead)
OUT/core.safetensors      kept by every seed
OUT/majority.safetensors  kept by more than half of the seeds
OUT/stability.json        everything below; also in each subnetwork file's metadata
OUT/stability-pairs.csv   per pair: IoU, IoM, chance IoU, densities
OUT/stability-blocks.csv  per pair and block: IoU
OUT/stability-iou.png     the pairwise IoU heatmap
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import subind_fast as sf
from subind_fast import analysis as A

from .files import atomic_write, atomic_write_json, atomic_write_text
from .statistics import mean_ci, paired

STABILITY = "stability.json"


def seed_directory(out: Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


@dataclass
class SeedStability:
    seeds: list[int]
    stability: A.Stability
    per_seed: dict[int, dict]   # seed -> {accuracy, density, l0_lambda, alone_accuracy}
    alone: dict[str, dict]      # "core"/"majority" -> {accuracy, density}


def _label(seed: int) -> str:
    return f"seed {seed}"


def seed_stability(subnetworks: Mapping[int, sf.Subnetwork],
                   accuracy_alone: Callable[[sf.Subnetwork], float]) -> SeedStability:
    """The stability of ``subnetworks`` (seed -> the subnetwork its discovery
    found, with the accuracy and λ that discovery recorded in its metadata),
    with every seed's subnetwork, the core and the majority scored by
    ``accuracy_alone``."""
    per_seed = {seed: {"accuracy": sub.metadata["subtask_accuracy"], "density": sub.density(),
                       "l0_lambda": sub.metadata.get("l0_lambda", 0.0),
                       "alone_accuracy": accuracy_alone(sub)}
                for seed, sub in subnetworks.items()}
    found = A.stability({_label(seed): sub for seed, sub in subnetworks.items()})
    alone = {name: {"accuracy": accuracy_alone(sub), "density": sub.density()}
             for name, sub in (("core", found.core), ("majority", found.majority))}
    return SeedStability(list(subnetworks), found, per_seed, alone)


def _per_seed_means(found: SeedStability, chance: bool) -> dict[int, float]:
    """Each seed's mean IoU (or chance IoU) with the other seeds."""
    rows = found.stability.chance if chance else found.stability.pairs
    means = {}
    for seed in found.seeds:
        mine = [row.iou for pair, row in rows.items() if _label(seed) in pair]
        means[seed] = sum(mine) / len(mine)
    return means


def summary(found: SeedStability) -> dict:
    """What stability.json and the subnetwork files' metadata hold."""
    iou, chance = _per_seed_means(found, False), _per_seed_means(found, True)
    return {
        "seeds": found.seeds,
        "mean_iou": mean_ci(list(iou.values())).as_dict(),
        "mean_chance_iou": mean_ci(list(chance.values())).as_dict(),
        "iou_minus_chance": paired(iou, chance).as_dict(),
        "pairs": [{"a": a, "b": b, "iou": row.iou, "iom": row.iom,
                   "chance_iou": found.stability.chance[(a, b)].iou}
                  for (a, b), row in found.stability.pairs.items()],
        "per_seed": {str(seed): {**found.per_seed[seed], "mean_iou_with_others": iou[seed],
                                 "chance_iou_with_others": chance[seed]}
                     for seed in found.seeds},
        "alone": found.alone,
    }


def _pairs_csv(found: SeedStability) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["a", "b", "iou", "iom", "chance_iou", "density_a", "density_b"])
    for (a, b), row in found.stability.pairs.items():
        writer.writerow([a, b, f"{row.iou:.6f}", f"{row.iom:.6f}",
                         f"{found.stability.chance[(a, b)].iou:.6f}",
                         f"{row.a / row.size:.6f}", f"{row.b / row.size:.6f}"])
    return buffer.getvalue()


def _blocks_csv(found: SeedStability) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["a", "b", "block", "iou", "iom", "density_a", "density_b"])
    for (a, b), blocks in found.stability.by_block.items():
        for block, row in blocks.items():
            writer.writerow([a, b, block, f"{row.iou:.6f}", f"{row.iom:.6f}",
                             f"{row.a / row.size:.6f}", f"{row.b / row.size:.6f}"])
    return buffer.getvalue()


def _heatmap(found: SeedStability, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(found.stability.labels)
    grid = np.eye(len(labels))
    for (a, b), row in found.stability.pairs.items():
        i, j = labels.index(a), labels.index(b)
        grid[i, j] = grid[j, i] = row.iou
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(labels), 0.8 + 0.6 * len(labels)))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_title(f"pairwise IoU (chance {found.stability.mean_chance_iou:.2f})", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def write_seed_stability(out: Path, found: SeedStability, started: float,
                         seed_files: Mapping[int, Path]) -> None:
    """Write the files of the module docstring into ``out`` and the summary
    into each seed's subnetwork file (``seed_files``: seed -> its path)."""
    out = Path(out)
    record = {**summary(found), "seconds": round(time.time() - started, 1)}
    brief = {key: record[key] for key in ("seeds", "mean_iou", "mean_chance_iou", "alone")}
    for name, sub in (("core", found.stability.core), ("majority", found.stability.majority)):
        sub.metadata["stability"] = brief
        sub.save(out / f"{name}.safetensors")
    for seed in found.seeds:
        path = seed_files[seed]
        sub = sf.Subnetwork.load(path)
        sub.metadata["stability"] = brief
        sub.save(path)
    atomic_write_text(out / "stability-pairs.csv", _pairs_csv(found))
    atomic_write_text(out / "stability-blocks.csv", _blocks_csv(found))
    _heatmap(found, out / "stability-iou.png")
    atomic_write_json(out / STABILITY, record)
    print("\n".join(report_lines(record)))


def report_lines(record: dict) -> list[str]:
    """The stability section of `subind report` (and what the run prints)."""
    from .statistics import Estimate

    def cell(key):
        return Estimate.of(record[key]).cell(3)

    diff = record["iou_minus_chance"]
    lines = [f"## seed stability over {len(record['seeds'])} seeds ({', '.join(map(str, record['seeds']))})",
             "",
             "| | mean [95 % CI] over seeds |", "|---|---|",
             f"| pairwise IoU | {cell('mean_iou')} |",
             f"| chance IoU (random masks, same sizes) | {cell('mean_chance_iou')} |",
             f"| IoU − chance, paired by seed | {Estimate.of(diff).cell(3)}; "
             f"{diff['wins']} above, {diff['losses']} below, sign test p = "
             f"{diff['sign_test_p']:.3g} |",
             "", "| seed | λ | accuracy (discovery) | alone | density | mean IoU with the "
                 "others | chance |",
             "|---|---|---|---|---|---|---|"]
    for seed, row in record["per_seed"].items():
        alone = row.get("alone_accuracy")  # absent from a record written before it existed
        lines.append(f"| {seed} | {row['l0_lambda']:g} | {row['accuracy']:.4f} | "
                     f"{'–' if alone is None else f'{alone:.4f}'} | "
                     f"{row['density']:.4f} | {row['mean_iou_with_others']:.4f} | "
                     f"{row['chance_iou_with_others']:.4f} |")
    lines += ["", "| subnetwork alone | accuracy | density |", "|---|---|---|"]
    for name, meaning in (("core", "kept by every seed"),
                          ("majority", "kept by more than half")):
        row = record["alone"][name]
        lines.append(f"| {name} ({meaning}) | {row['accuracy']:.4f} | {row['density']:.4f} |")
    return lines


def report(out: Path) -> list[str]:
    """The stability section for `subind report OUT` ([] when OUT has none)."""
    path = Path(out) / STABILITY
    return report_lines(json.loads(path.read_text())) if path.is_file() else []
