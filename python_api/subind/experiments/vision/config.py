"""The vision experiment's configuration: the conditions it can run, every
option with the paper text's default, the presets, and their checks."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Optional

from subind_fast.subnetworks.transfer import REINIT_POLICIES

from ...engine import validation as check
from ...engine.options import Floats, Ints, Strs, config_from_preset, identity_of
from ...engine.discovery_seeds import DiscoverySeeds
from ...engine.protocol import Discovery
from ...engine.training import BN_STATS
from ...engine.speed import COMPILE_CHOICES, KERNEL_CHOICES, check_speed_options
from . import architectures as arch_lib

EXPERIMENT = "vision"
GRID_FIELDS = ("archs", "conditions", "n_disambiguation", "seeds")
KEY_FIELDS = ("arch", "condition", "n_disambiguation", "seed")
RECORD_FIELDS = KEY_FIELDS + ("original_accuracy", "pooled_accuracy", "cue_conflict", "config")


@dataclass(frozen=True)
class VisionCondition:
    """engine: the protocol condition applied to a fresh model (None: start
    from a copy of the adapted model); source: whose subnetwork;
    data: original | mixture; trains: False evaluates the adapted model as is."""
    engine: Optional[str]
    source: str = "adapted"
    data: str = "original"
    trains: bool = True


CONDITIONS = {
    "subtask_induction": VisionCondition("subtask_induction"),
    "scratch": VisionCondition("scratch"),
    "random": VisionCondition("random"),
    "complement": VisionCondition("complement"),
    "full_model": VisionCondition(None),                        # fine-tune the adapted model
    "data_mixture": VisionCondition(None, data="mixture"),      # … on original + pooled images
    "pretrained": VisionCondition(None, trains=False),          # head-only adaptation
    "random_init_discovery": VisionCondition("subtask_induction", source="random_init"),
}
# Options only one data source reads (VisionConfig.validate refuses the others).
FOLDER_ONLY = ("cue_conflict", "resnet18_weights", "vit_weights", "image_size", "workers")
#: the synthetic-data settings that only one architecture reads
ARCH_ONLY = {"resnet18": ("resnet_width", "resnet_stem_stride"),
             "vit": ("vit_width", "vit_base_samples", "vit_base_epochs")}
SYNTHETIC_ONLY = ("resnet_width", "vit_width", "contrast", "rotation", "train_samples",
                  "pooled_samples", "base_samples", "base_epochs", "vit_base_samples",
                  "vit_base_epochs")


@dataclass
class VisionConfig:
    """The vision experiment's options, with the paper text's values as
    defaults (§5, App. C); the presets start from other values."""
    archs: Strs = field(default_factory=lambda: ["resnet18", "vit"])
    """architectures (grid axis): resnet18, vit"""
    conditions: Strs = field(default_factory=lambda: list(CONDITIONS))
    """conditions (grid axis): subtask_induction, scratch, random, complement, full_model,
    data_mixture, pretrained, random_init_discovery"""
    n_disambiguation: Ints = field(default_factory=lambda: [0])
    """disambiguating images (shape and texture independent) added to the training set
    (grid axis)"""
    seeds: Ints = field(default_factory=lambda: [0, 1, 2])
    """seeds (grid axis)"""
    data: str = "synthetic"
    """synthetic, or a 16-class ImageNet folder (subind imagenet16)"""
    cue_conflict: str = ""
    """folder data: cue-conflict stimuli in Geirhos' layout"""
    resnet18_weights: str = ""
    """folder data: the ImageNet ResNet-18 weights file"""
    vit_weights: str = ""
    """folder data: the ImageNet ViT-B/16 weights file"""
    image_size: int = 224
    """folder data: input resolution"""
    workers: int = 8
    """folder data: DataLoader worker processes"""
    resnet_width: int = 16
    """channels of the ResNet's first stage"""
    resnet_stem_stride: int = 2
    """stride of the ResNet's stem (1 or 2)"""
    vit_width: int = 64
    """the ViT's embedding size"""
    object_scale: Floats = field(default_factory=lambda: [0.5, 0.8])
    """synthetic images: the objects' size range, low,high (fractions of the image)"""
    rotation: float = 180.0
    """synthetic images: objects rotate by up to ± this many degrees"""
    jitter: float = 4.0
    """synthetic images: objects move by up to this many pixels"""
    contrast: float = 0.12
    """synthetic images: object/background brightness difference (shape salience)"""
    base_samples: int = 6400
    """synthetic images: the ResNet's base-training images"""
    vit_base_samples: int = 25600
    """synthetic images: the ViT's base-training images (a ViT overfits the ResNet's set
    before it learns shape: README)"""
    base_untextured: float = 0.25
    """synthetic images: share of untextured objects added to base training"""
    train_samples: int = 1600
    """synthetic images: original (aligned) training images per run"""
    pooled_samples: int = 1600
    """synthetic images: mean-pooled images for discovery"""
    eval_samples: int = 800
    """synthetic images: evaluation images per set"""
    base_epochs: int = 20
    """the ResNet base model's training epochs"""
    vit_base_epochs: int = 20
    """the ViT base model's training epochs"""
    base_lr: float = 2e-3
    """base model learning rate"""
    head_epochs: int = 10
    """epochs of the head-only adaptation to the 16 classes"""
    head_lr: float = 1e-2
    """learning rate of the head-only adaptation"""
    discovery: Discovery = field(default_factory=lambda: Discovery(
        epochs=100, lambdas=[1e-6, 1e-7, 1e-8], optimizer="adamw"))
    """how the subnetwork is discovered: every setting of `subind discover`, with the
    paper's 100 epochs, λ grid and AdamW; the classifier is left out unless --mask-head"""
    repeated_discovery: DiscoverySeeds = field(default_factory=DiscoverySeeds)
    """the discovery over several seeds (--discovery-seeds) and the subnetwork each transfer
    run receives (--transfer-subnetwork)"""
    discovery_batch_size: int = 32
    """discovery batch size"""
    mask_head: bool = False
    """mask the classifier too (the authors' code: yes)"""
    transfer_epochs: int = 30
    """transfer training epochs"""
    transfer_optimizer: Literal["sgd", "adamw"] = "sgd"
    """sgd (the paper) or adamw"""
    transfer_lr: float = 1e-3
    """transfer learning rate"""
    momentum: float = 0.9
    """SGD momentum of the transfer"""
    weight_decay: float = 1e-4
    """weight decay of the transfer"""
    batch_size: int = 128
    """training batch size"""
    reinit: Literal["all", "masked"] = "all"
    """all (the paper text) or masked (the authors' code): what the transfer re-initialises"""
    bn_stats: Literal[BN_STATS] = "batch"
    """BatchNorm statistics while the masks learn: batch (the paper text) or frozen"""
    class_weighted: bool = False
    """class-weighted loss for unbalanced data"""
    bootstrap: int = 200
    """bootstrap samples of the shape-bias intervals"""
    device: str = "cpu"
    """cpu, cuda, cuda:1, ..."""
    kernels: Literal[KERNEL_CHOICES] = "fused"
    """the masked layers' kernels: fused (ours) or eager (plain PyTorch ops)"""
    compile: Literal[COMPILE_CHOICES] = "auto"
    """torch.compile the discovery model: auto (on for CUDA, off on the CPU), on, off"""

    def validate(self, given: Iterable[str] = ()) -> "VisionConfig":
        check_speed_options(self.kernels, self.compile)
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown or not self.conditions:
            raise ValueError(f"unknown conditions {unknown or self.conditions}; choose from "
                             f"{sorted(CONDITIONS)}")
        bad = [a for a in self.archs if a not in arch_lib.ARCHITECTURES]
        if bad or not self.archs:
            raise ValueError(f"unknown archs {bad or self.archs}; choose from "
                             f"{list(arch_lib.ARCHITECTURES)}")
        if self.data != "synthetic":
            if not Path(self.data).is_dir():
                raise ValueError(f"data must be 'synthetic' or a 16-class ImageNet folder; "
                                 f"{self.data!r} is not a directory")
            for arch in self.archs:
                weights = getattr(self, f"{arch}_weights")
                if not weights or not Path(weights).is_file():
                    raise ValueError(f"{arch}_weights: the ImageNet weights file of the {arch} "
                                     f"base model is required with folder data (got "
                                     f"{weights!r})")
            check.positive_int("image_size", self.image_size)
            if any(self.n_disambiguation):
                raise ValueError("n_disambiguation applies to the synthetic data only; use [0] "
                                 "with a 16-class ImageNet folder")
            if self.workers < 0:
                raise ValueError(f"workers must be >= 0, got {self.workers}")
        check.int_list("seeds", self.seeds, 0)
        check.int_list("n_disambiguation", self.n_disambiguation, 0)
        for name in ("resnet_width", "vit_width", "base_samples", "vit_base_samples",
                     "train_samples", "pooled_samples", "eval_samples", "base_epochs",
                     "vit_base_epochs", "head_epochs",
                     "discovery_batch_size", "transfer_epochs",
                     "batch_size"):
            check.positive_int(name, getattr(self, name))
        if self.resnet_stem_stride not in (1, 2):
            raise ValueError(f"resnet_stem_stride must be 1 or 2, got {self.resnet_stem_stride}")
        for name in ("base_lr", "head_lr", "transfer_lr"):
            check.positive(name, getattr(self, name))
        for name in ("momentum", "weight_decay", "rotation", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if len(self.object_scale) != 2 or not 0 < self.object_scale[0] <= self.object_scale[1]:
            raise ValueError(f"object_scale must be [low, high] with 0 < low <= high, got "
                             f"{self.object_scale}")
        check.in_range("contrast", self.contrast, 0, 0.5)
        check.in_range("base_untextured", self.base_untextured, 0, 1)
        self.discovery.validate(given)
        self.repeated_discovery.validate(self.seeds, self.discovery.selects, given)
        if self.repeated_discovery.repeated and not any(
                CONDITIONS[c].engine in ("subtask_induction", "random", "complement")
                for c in self.conditions):
            raise ValueError(f"--discovery-seeds repeats the discovery, but none of the "
                             f"conditions {self.conditions} transfers a subnetwork")
        if self.discovery.method == "lottery_ticket":
            # The lottery ticket compares the source with the weights it was trained from.
            if self.data != "synthetic":
                raise ValueError("--method lottery_ticket compares the base model with the "
                                 "weights it was trained from, which the ImageNet weights do "
                                 "not come with; run `subind discover --method lottery_ticket "
                                 "--pretrained-weights FILE` instead")
            if "random_init_discovery" in self.conditions:
                raise ValueError("--method lottery_ticket and the random_init_discovery "
                                 "condition: a random-init model was never trained, so no "
                                 "weight moved; leave one out")
        if self.transfer_optimizer not in ("sgd", "adamw"):
            raise ValueError(f"transfer_optimizer must be sgd or adamw, got "
                             f"{self.transfer_optimizer!r}")
        if self.reinit not in REINIT_POLICIES:
            raise ValueError(f"reinit must be one of {REINIT_POLICIES}, got {self.reinit!r}")
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {BN_STATS}, got {self.bn_stats!r}")
        check.device(self.device)
        self._refuse_ignored(set(given))
        return self

    def _refuse_ignored(self, given: set) -> None:
        """Options the user gave that this configuration's data source would
        ignore: an error naming each (a folder-data option on the synthetic
        data, or a synthetic-data option on a folder)."""
        wrong = [name for name in (FOLDER_ONLY if self.data == "synthetic" else SYNTHETIC_ONLY)
                 if name in given]
        if self.data != "synthetic":
            wrong += [f"{arch}_weights" for arch in arch_lib.ARCHITECTURES
                      if f"{arch}_weights" in given and arch not in self.archs]
        else:  # an architecture's own synthetic settings, without that architecture
            wrong += [name for arch, names in ARCH_ONLY.items() if arch not in self.archs
                      for name in names if name in given]
        if wrong:
            flags = ", ".join("--" + name.replace("_", "-") for name in wrong)
            source = (f"the synthetic data with --archs {','.join(self.archs)}"
                      if self.data == "synthetic" else f"folder data (--data {self.data})"
                      f" with --archs {','.join(self.archs)}")
            raise ValueError(f"{flags} would be ignored by {source}; leave "
                             f"{'it' if len(wrong) == 1 else 'them'} out"
                             + (" or pass --data DIR (a 16-class ImageNet folder)"
                                if self.data == "synthetic" else ""))

    def base_recipe(self, arch: str) -> tuple[int, int]:
        """(images, epochs) of ``arch``'s base training on the synthetic data: one
        generator for both architectures, but the ViT draws more of its images."""
        if arch == "vit":
            return self.vit_base_samples, self.vit_base_epochs
        return self.base_samples, self.base_epochs

    def identity(self) -> dict:
        return identity_of(self, GRID_FIELDS + ("device",)
                           + self.repeated_discovery.left_out_of_identity("repeated_discovery"))


PRESETS = {
    # end to end in well under a minute (tests): one seed, both architectures
    "smoke": dict(archs=["resnet18", "vit"], conditions=["subtask_induction", "scratch",
                                                         "pretrained"],
                  seeds=[0], resnet_width=8, vit_width=32, base_samples=320, vit_base_samples=320,
                  train_samples=160, pooled_samples=160, eval_samples=96, base_epochs=2,
                  vit_base_epochs=2, head_epochs=1,
                  discovery=dict(epochs=2, lambdas=[1e-7], mask_lr=5e-2), transfer_epochs=2,
                  batch_size=32, bootstrap=20),
    # the demo: ResNet-18 (reduced width), 3 seeds, ≤ 10 min on 2 CPU cores.  Departures
    # from the defaults, for a run this short: masks learn at 1e-2 (15 epochs instead of 100),
    # transfer trains with AdamW (190 steps instead of 33k SGD steps), and the transfer
    # inherits what no mask covers (BatchNorm, head) as the authors' code does: under the
    # paper text's reinit="all" this data shows no effect (README).
    "quick": dict(archs=["resnet18"], conditions=["subtask_induction", "scratch", "random",
                                                  "full_model", "pretrained"],
                  seeds=[0, 1, 2], base_epochs=12, head_epochs=5,
                  discovery=dict(epochs=15, lambdas=[1e-7], mask_lr=1e-2), transfer_epochs=15,
                  transfer_optimizer="adamw",
                  transfer_lr=2e-3, reinit="masked"),
    # every condition, both architectures, the paper's discovery schedule
    "full": dict(),
    # the paper's §5 / App. C.1 setting on 16-class ImageNet read from disk (a GPU job): timm
    # ResNet-18 and ViT-B/16 from local ImageNet weights; needs --data, --cue-conflict and the
    # weights files.  33,160 SGD steps at batch 128 over 213k images ≈ 20 epochs.
    "paper": dict(seeds=[0], discovery=dict(epochs=100, lambdas=[1e-6, 1e-7, 1e-8]),
                  discovery_batch_size=32, transfer_epochs=20, transfer_optimizer="sgd",
                  transfer_lr=1e-3, momentum=0.9, weight_decay=1e-4, batch_size=128,
                  head_epochs=5, head_lr=1e-3, bootstrap=1000, device="cuda"),
}
# the README's tables: the demo's runs with 5 seeds, so every comparison rests on 5 paired seeds
PRESETS["tables"] = dict(PRESETS["quick"], seeds=[0, 1, 2, 3, 4])
TIMM_NAMES = {"resnet18": "resnet18", "vit": "vit_base_patch16_224"}  # folder data


def config_for(preset: str, **overrides) -> VisionConfig:
    return config_from_preset(VisionConfig, PRESETS, preset, **overrides)
