"""subind-fast: compiled kernels for Subtask Induction.

Masked linear/convolution with the continuous-sparsification mask
W_eff = θ ⊙ σ(β·s) (or the hard mask 1[s>0]) fused into forward and backward,
as torch custom ops (namespace ``subind``) and drop-in ``nn`` layers.
Importing never touches CUDA and never fails for a missing compiled part.
"""
from . import _ops  # registers the torch.library ops
from ._extension import MissingKernelError
from .dispatch import backend_info
from .functional import (l0, mask_weight, masked_conv, masked_conv1d, masked_conv2d,
                         masked_conv3d, masked_linear)
from .nn import (l0_penalty, mask_model, masked_layers, set_beta, set_mode, unmask_model)
from . import nn

__version__ = "0.1.0"

__all__ = ["MissingKernelError", "backend_info", "l0", "l0_penalty", "mask_model", "mask_weight",
           "masked_conv", "masked_conv1d", "masked_conv2d", "masked_conv3d", "masked_layers",
           "masked_linear", "nn", "set_beta", "set_mode", "unmask_model"]
