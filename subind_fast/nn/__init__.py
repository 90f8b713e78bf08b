"""Masked layers (drop-in replacements) and whole-model helpers."""
from .ablation import (ABLATIONS, ablation_parameters, check_ablation, record_corrupted,
                       record_corrupted_before_each_forward, record_means, resample,
                       set_ablation, unmasked)
from .attention import MaskedMultiheadAttention
from .coverage import MaskCoverageError
from .layers import MaskedConv1d, MaskedConv2d, MaskedConv3d, MaskedGPT2Conv1D, MaskedLinear
from .base import MaskedWeightMixin
from .mask_state import DEFAULT_MASK_INIT
from .methods import GRANULARITIES, METHODS, MaskMethod, as_method
from .model import (MaskReport, density, keep_exactly, l0_penalty, mask_model, masked_layers,
                    select_modules, set_beta, set_mode, shift_to_density, subnetwork_of,
                    unmask_model)
from .pretrained import masked_from_pretrained
from .registry import masked_class_for, masks

__all__ = ["ABLATIONS", "DEFAULT_MASK_INIT", "GRANULARITIES", "METHODS", "MaskCoverageError",
           "MaskMethod", "MaskReport", "MaskedConv1d", "MaskedConv2d", "MaskedConv3d",
           "MaskedGPT2Conv1D", "MaskedLinear", "MaskedMultiheadAttention", "MaskedWeightMixin",
           "ablation_parameters", "as_method", "check_ablation", "density", "keep_exactly",
           "l0_penalty", "mask_model", "masked_class_for", "masked_from_pretrained",
           "masked_layers", "masks", "record_corrupted", "record_corrupted_before_each_forward",
           "record_means", "resample", "select_modules", "set_ablation", "set_beta", "set_mode",
           "shift_to_density", "subnetwork_of", "unmask_model", "unmasked"]
