"""An experiment's discovery stage over several seeds, and which of the
subnetworks it finds each transfer run receives.

Repeated discovery can return different but equally good subnetworks, so a
transfer result that rests on one discovery seed says nothing about how much
of it is that seed's luck.  With ``--discovery-seeds 0,1,2,…`` an experiment
(arithmetic, vision) discovers its subnetwork once per seed — the seed draws
the discovery's data order, dropout, mask samples and corrupted pairs — on the
same trained model, keeps every subnetwork, and writes their stability
(engine/seed_stability.py: pairwise IoU against chance, the core every seed
kept and the majority, each scored alone).  ``--transfer-subnetwork`` says
which subnetwork a transfer run gets:

* ``matched`` (default): the run with seed s gets the subnetwork discovered
  with seed s, so each run repeats the whole pipeline after the base model
  and the intervals over seeds include the discovery's variation;
* ``first``: every run gets the first discovery seed's (one subnetwork, as
  in the paper), the others only measure stability;
* ``core`` / ``majority``: the weights every seed (more than half) kept.

One stage (one model, one subtask) keeps, in its folder::

    seed-<k>.safetensors (+ .json)   seed k's discovery (a cached stage)
    seed-<k>-logs/                   its per-epoch logs
    core.safetensors (+ .json), majority.safetensors, stability.json,
    stability-pairs.csv, stability-blocks.csv, stability-iou.png
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal, Optional, Sequence

import subind_fast as sf

from . import validation as check
from .options import Ints
from .seed_stability import STABILITY, report, seed_stability, write_seed_stability
from .sweep import cached_stage

TRANSFER_CHOICES = ("matched", "first", "core", "majority")


@dataclass
class DiscoverySeeds:
    """Discovery repeated over seeds, and which subnetwork each transfer run
    receives (engine/discovery_seeds.py)."""
    discovery_seeds: Ints = field(default_factory=list)
    """run the discovery stage once per seed (two or more; replaces --seed) and report how
    alike the subnetworks are: pairwise IoU against chance, the weights every seed and a
    majority kept, each scored alone (when left out: one discovery with --seed)"""
    transfer_subnetwork: Literal[TRANSFER_CHOICES] = "matched"
    """with --discovery-seeds, the subnetwork a transfer run receives: matched (the run with
    seed s gets discovery seed s's), first (the first discovery seed's, for every run), core
    (the weights every discovery seed kept) or majority (kept by more than half)"""

    @property
    def repeated(self) -> bool:
        return bool(self.discovery_seeds)

    def validate(self, transfer_seeds: Sequence[int], selects: bool,
                 given: Iterable[str] = ()) -> "DiscoverySeeds":
        """``transfer_seeds``: the experiment's seeds; ``selects``: whether the
        discovery method chooses weights without training (so that every
        seed would choose the same ones)."""
        given = set(given)
        check.choices_of(self)
        if not self.repeated:
            if "transfer_subnetwork" in given:
                raise ValueError("--transfer-subnetwork chooses among the subnetworks of "
                                 "--discovery-seeds; give --discovery-seeds too")
            return self
        check.int_list("--discovery-seeds", self.discovery_seeds, 0)
        if len(self.discovery_seeds) < 2:
            raise ValueError(f"--discovery-seeds needs at least two seeds to compare, got "
                             f"{self.discovery_seeds}")
        if "seed" in given:
            raise ValueError("--discovery-seeds runs one discovery per seed; leave out --seed")
        if selects:
            raise ValueError("the discovery method selects weights without training: every "
                             "seed would select the same ones, so --discovery-seeds has "
                             "nothing to compare")
        if self.transfer_subnetwork == "matched":
            unmatched = [s for s in transfer_seeds if s not in self.discovery_seeds]
            if unmatched:
                raise ValueError(f"--transfer-subnetwork matched gives the run with seed s the "
                                 f"subnetwork of discovery seed s, but seeds {unmatched} are "
                                 f"not among --discovery-seeds {self.discovery_seeds}; add "
                                 "them, or choose first, core or majority")
        return self

    def left_out_of_identity(self, field_name: str) -> tuple[str, ...]:
        """The config field holding these options, as a manifest leaves it
        out when nothing is repeated (then they change no result, and a
        results directory from before they existed still resumes)."""
        return () if self.repeated else (field_name,)

    def label_for(self, transfer_seed: int) -> str:
        """Which subnetwork the run with ``transfer_seed`` receives, as its
        record names it ("seed 3", "core", …)."""
        if self.transfer_subnetwork == "matched":
            return f"seed {transfer_seed}"
        if self.transfer_subnetwork == "first":
            return f"seed {self.discovery_seeds[0]}"
        return self.transfer_subnetwork


class SeededDiscovery:
    """One discovery stage over several seeds, each seed's discovery and the
    stability over them cached in ``folder`` (see the module docstring).

    ``discover_seed(seed, path, log_dir)`` runs the discovery with that seed,
    saves the subnetwork at ``path`` and returns (subnetwork, stage record);
    ``accuracy_alone(subnetwork)`` scores a subnetwork with every other masked
    weight zeroed on the discovery's evaluation data."""

    def __init__(self, folder: Path, seeds: Sequence[int],
                 discover_seed: Callable[[int, Path, Path], tuple[sf.Subnetwork, dict]],
                 accuracy_alone: Callable[[sf.Subnetwork], float]):
        self.folder, self.seeds = Path(folder), list(seeds)
        self.discover_seed, self.accuracy_alone = discover_seed, accuracy_alone

    def path(self, seed: int) -> Path:
        return self.folder / f"seed-{seed}.safetensors"

    def subnetwork(self, seed: int) -> sf.Subnetwork:
        """Seed ``seed``'s discovery (built once)."""
        if seed not in self.seeds:
            raise ValueError(f"seed {seed} is not one of this stage's discovery seeds "
                             f"{self.seeds}")
        return cached_stage(self.path(seed), sf.Subnetwork.load,
                            lambda path: self.discover_seed(seed, path,
                                                            self.folder / f"seed-{seed}-logs"))

    def core(self) -> sf.Subnetwork:
        """The weights every seed kept; building it runs every seed's discovery
        and writes the stability files (so they exist before any transfer)."""
        def build(path):
            started = time.time()
            found = seed_stability({seed: self.subnetwork(seed) for seed in self.seeds},
                                   self.accuracy_alone)
            write_seed_stability(self.folder, found, started,
                                 {seed: self.path(seed) for seed in self.seeds})
            return found.stability.core, {"seeds": self.seeds, "alone": found.alone,
                                          "seconds": time.time() - started}

        return cached_stage(self.folder / "core.safetensors", sf.Subnetwork.load, build)

    def chosen(self, label: str) -> sf.Subnetwork:
        """The subnetwork ``DiscoverySeeds.label_for`` named, after the
        stability of all seeds is written."""
        core = self.core()
        if label == "core":
            return core
        if label == "majority":
            return sf.Subnetwork.load(self.folder / "majority.safetensors")
        seed = int(label.removeprefix("seed "))
        return self.subnetwork(seed)


@dataclass(frozen=True)
class StageRecord:
    """One discovery stage's record under an experiment's subnetworks/ folder."""
    name: str                # the stage: "L2", "resnet18", "resnet18-random-init"
    seed: Optional[int]      # its discovery seed when repeated (--discovery-seeds), else None
    path: Path               # the record (NAME.json, or NAME/seed-<k>.json)


def stage_records(subnetworks: Path) -> list[StageRecord]:
    """Every discovery under an experiment's ``subnetworks`` folder:
    ``NAME.json`` for a single discovery, ``NAME/seed-<k>.json`` for each
    seed of a repeated one."""
    root = Path(subnetworks)
    if not root.is_dir():
        return []
    found = [StageRecord(path.stem, None, path) for path in sorted(root.glob("*.json"))]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        seeds = sorted(int(p.stem.removeprefix("seed-")) for p in folder.glob("seed-*.json"))
        found += [StageRecord(folder.name, seed, folder / f"seed-{seed}.json") for seed in seeds]
    return found


def stability_sections(subnetworks: Path) -> tuple[list[str], list[Path]]:
    """(markdown lines, heatmaps) of every repeated discovery stage under
    ``subnetworks`` whose stability is written: the section `subind report`
    shows for it (engine/seed_stability.py)."""
    root = Path(subnetworks)
    folders = sorted(p for p in root.iterdir() if (p / STABILITY).is_file()) \
        if root.is_dir() else []
    lines, figures = [], []
    for folder in folders:
        section = report(folder)
        lines += [f"### {folder.name}: " + section[0].removeprefix("## "), *section[1:], ""]
        if (folder / "stability-iou.png").is_file():
            figures.append(folder / "stability-iou.png")
    return lines, figures


def received_line(records: Sequence[dict]) -> str:
    """Which subnetworks the transfer runs received, from their records'
    ``subnetwork`` labels ("" when no run names one: a single discovery)."""
    from collections import Counter

    counts = Counter(r["subnetwork"] for r in records if r.get("subnetwork"))
    if not counts:
        return ""
    return ("transfer runs received: " + ", ".join(
        f"{label} ({n} run{'s' if n > 1 else ''})" for label, n in sorted(counts.items())))


def one_or_seeded(choice: DiscoverySeeds, transfer_seed: int,
                  single: Callable[[], sf.Subnetwork],
                  seeded: Callable[[], SeededDiscovery]) -> tuple[sf.Subnetwork, Optional[str]]:
    """(the subnetwork the run with ``transfer_seed`` receives, its label):
    the single discovery's when no --discovery-seeds (label None), else the
    repeated stage's choice."""
    if not choice.repeated:
        return single(), None
    label = choice.label_for(transfer_seed)
    return seeded().chosen(label), label
