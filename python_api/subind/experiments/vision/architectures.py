"""The embedded default's models, real timm classes built from configs: a
reduced-width ResNet-18 with a CIFAR-style stem (3×3 stride-1 convolution, no
max-pool: 32 px images keep their spatial detail) and a small ViT on 4 px
patches."""
from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES = ("resnet18", "vit")


def make_model(arch: str, num_classes: int, width: int, seed: int,
               stem_stride: int = 1) -> nn.Module:
    """``width``: the ResNet's first stage channels (64 in the full model) or
    the ViT's embedding size; ``stem_stride``: the ResNet stem's stride (2
    quarters the compute)."""
    import timm

    if width < 4:
        raise ValueError(f"width must be >= 4, got {width}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "resnet18":
            if width % 2:
                raise ValueError(f"the ResNet's width must be even, got {width}")
            # timm's deep stem ends in 2 * stem_width channels; its convolutions are then
            # replaced by the single stride-1 one
            model = timm.create_model("resnet18", pretrained=False, num_classes=num_classes,
                                      channels=(width, 2 * width, 4 * width, 8 * width),
                                      stem_type="deep", stem_width=width // 2)
            model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=stem_stride, padding=1,
                                    bias=False)
            model.maxpool = nn.Identity()
        elif arch == "vit":
            if width % 4:
                raise ValueError(f"the ViT's width (embedding size) must be divisible by its "
                                 f"4 heads, got {width}")
            model = timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                      num_classes=num_classes, img_size=32, patch_size=4,
                                      embed_dim=width, depth=4, num_heads=4, mlp_ratio=2.0)
        else:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, got {arch!r}")
    return model


def quick_resnet18() -> nn.Module:
    """The quick preset's ResNet-18 (width 16, 16 classes) as an entry point, e.g.
    ``subind discover --model entry:subind.experiments.vision.architectures:quick_resnet18
    --weights OUT/adapted/resnet18/model.safetensors``."""
    return make_model("resnet18", 16, 16, seed=0, stem_stride=2)
