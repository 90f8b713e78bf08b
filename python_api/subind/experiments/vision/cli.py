"""`subind vision …`: run (a shard of) the vision sweep."""
from __future__ import annotations

import argparse

from ...engine import cli as C


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


# (flag, config field, type, help) of the vision command's overrides.
OPTIONS = [
    ("--archs", "archs", C.str_list, "resnet18,vit"),
    ("--conditions", "conditions", C.str_list,
     "subtask_induction,scratch,random,complement,full_model,data_mixture,pretrained,"
     "random_init_discovery"),
    ("--n-disamb", "n_disambiguation", C.int_list,
     "disambiguating images (shape and texture independent) added to the training set"),
    ("--seeds", "seeds", C.int_list, "e.g. 0,1,2"),
    ("--resnet-width", "resnet_width", int, "channels of the ResNet's first stage"),
    ("--vit-width", "vit_width", int, "the ViT's embedding size"),
    ("--contrast", "contrast", float, "object/background brightness difference (shape salience)"),
    ("--rotation", "rotation", float, "objects rotate by up to ± this many degrees"),
    ("--train-samples", "train_samples", int, "original (aligned) training images per run"),
    ("--pooled-samples", "pooled_samples", int, "mean-pooled images for discovery"),
    ("--base-epochs", "base_epochs", int, "base model training epochs"),
    ("--discovery-epochs", "discovery_epochs", int, "discovery epochs (beta 1 -> 100)"),
    ("--lambdas", "lambdas", C.float_list, "L0 penalties to try, e.g. 1e-6,1e-7,1e-8"),
    ("--mask-lr", "mask_lr", float, "discovery learning rate of the mask logits"),
    ("--mask-head", "mask_head", _bool, "mask the classifier too (authors' code: true)"),
    ("--transfer-epochs", "transfer_epochs", int, "transfer training epochs"),
    ("--transfer-lr", "transfer_lr", float, "transfer learning rate"),
    ("--transfer-optimizer", "transfer_optimizer", str, "sgd (paper) or adamw"),
    ("--reinit", "reinit", str, "all (paper text) or masked (authors' code)"),
    ("--bn-stats", "bn_stats", str, "train (paper text) or frozen BatchNorm statistics"),
    ("--class-weighted", "class_weighted", _bool, "class-weighted loss for unbalanced data"),
    ("--batch-size", "batch_size", int, "training batch size"),
    ("--device", "device", str, "cpu, cuda, cuda:1, ..."),
    ("--kernels", "kernels", str, "fused (ours, default) or eager (plain PyTorch ops)"),
    ("--compile", "compile", str, "torch.compile the discovery model: auto (default), on, off"),
    ("--data", "data", str, "synthetic (default) or a 16-class ImageNet folder (subind imagenet16)"),
    ("--cue-conflict", "cue_conflict", str, "folder data: cue-conflict stimuli (Geirhos layout)"),
    ("--resnet18-weights", "resnet18_weights", str, "folder data: ImageNet ResNet-18 weights file"),
    ("--vit-weights", "vit_weights", str, "folder data: ImageNet ViT-B/16 weights file"),
    ("--image-size", "image_size", int, "folder data: input resolution (224)"),
    ("--workers", "workers", int, "folder data: DataLoader worker processes"),
]


def _experiment():
    from . import config
    from .experiment import VisionExperiment

    return config.PRESETS, config.config_for, VisionExperiment


def register(subparsers) -> None:
    C.add_sweep_command(subparsers, "vision", "the vision experiment (paper §5)", OPTIONS, _experiment)
