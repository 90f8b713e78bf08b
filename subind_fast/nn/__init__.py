"""Masked layers (drop-in replacements) and whole-model helpers."""
from .layers import (DEFAULT_MASK_INIT, MaskedConv1d, MaskedConv2d, MaskedConv3d,
                     MaskedGPT2Conv1D, MaskedLinear, MaskedWeightMixin)
from .model import l0_penalty, mask_model, masked_layers, set_beta, set_mode, unmask_model

__all__ = ["DEFAULT_MASK_INIT", "MaskedConv1d", "MaskedConv2d", "MaskedConv3d", "MaskedGPT2Conv1D",
           "MaskedLinear", "MaskedWeightMixin", "l0_penalty", "mask_model", "masked_layers",
           "set_beta", "set_mode", "unmask_model"]
