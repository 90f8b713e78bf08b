"""Fixes for modules that would bypass a masked layer by reading its weight
directly.  Each fix keeps the module's computation and makes it go through
the masked layer; ``mask_model`` applies them and lists them in its report.

* timm EVA, BEiT and SwinV2 attention compute ``F.linear(x, self.qkv.weight,
  qkv_bias)`` when q/v biases are separate parameters.  Their own switch
  ``qkv_bias_separate=True`` computes ``self.qkv(x) + qkv_bias`` instead:
  the same sum, through the (masked) qkv layer.
* nn.TransformerEncoderLayer's inference fast path
  (torch._transformer_encoder_layer_fwd) reads the attention and feed-forward
  weights directly.  PyTorch skips it when forward hooks are attached, so a
  (no-op) forward pre-hook is registered on each such layer holding masks.
* nn.TransformerEncoder converts padded inputs to nested tensors for that
  fast path; ``use_nested_tensor`` is switched off.
"""
from __future__ import annotations

from torch import nn

from .base import MaskedWeightMixin


def _holds_masks(module: nn.Module) -> bool:
    return any(isinstance(m, MaskedWeightMixin) for m in module.modules())


def _keep_off_fast_path(module, args):
    """Registered so nn.TransformerEncoderLayer takes its regular path, which
    calls the masked layers (the fast path reads their weights directly)."""
    return None


def apply_compatibility_fixes(model: nn.Module) -> list[str]:
    """Apply every fix that applies; return one line per module fixed."""
    fixes = []
    for name, module in model.named_modules():
        label = name or "<root>"
        if (isinstance(getattr(module, "qkv", None), MaskedWeightMixin)
                and getattr(module, "qkv_bias_separate", None) is False
                and getattr(module, "q_bias", None) is not None):
            module.qkv_bias_separate = True
            fixes.append(f"{label}: qkv_bias_separate=True ({type(module).__name__} would call "
                         "F.linear on qkv.weight)")
        if isinstance(module, nn.TransformerEncoderLayer) and _holds_masks(module):
            if _keep_off_fast_path not in module._forward_pre_hooks.values():
                module.register_forward_pre_hook(_keep_off_fast_path)
                fixes.append(f"{label}: inference fast path off (it reads weights directly)")
        if (isinstance(module, nn.TransformerEncoder) and getattr(module, "use_nested_tensor", False)
                and _holds_masks(module)):
            module.use_nested_tensor = False
            fixes.append(f"{label}: use_nested_tensor=False (nested inputs feed the fast path)")
    return fixes
