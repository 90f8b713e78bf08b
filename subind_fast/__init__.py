"""subind-fast: compiled kernels for Subtask Induction.

Masked linear/convolution with the continuous-sparsification mask
W_eff = θ ⊙ σ(β·s) (or the hard mask 1[s>0]) fused into forward and backward,
as torch custom ops (namespace ``subind``) and drop-in ``nn`` layers; 1-bit
subnetworks, transfer into a fresh model, and fused optimizers that leave the
frozen subnetwork untouched.
Importing never touches CUDA and never fails for a missing compiled part.
"""
from .ops import (MissingKernelError, backend_info, kernels, l0, mask_weight, masked_conv,
                  masked_conv1d, masked_conv2d, masked_conv3d, masked_linear, set_kernels,
                  use_kernels)  # importing ops loads the compiled library
from .nn import (l0_penalty, mask_model, masked_layers, set_beta, set_mode, unmask_model)
from . import nn, sharded
from .subnetworks import analysis, selection
from .bits import pack_bits, unpack_bits
from .subnetworks.optim import MaskedAdamW, MaskedSGD
from .subnetwork import Subnetwork
from .subnetworks.transfer import FrozenMasks, transfer

__version__ = "0.1.0"

__all__ = ["analysis", "selection", "FrozenMasks", "MaskedAdamW", "MaskedSGD", "Subnetwork", "pack_bits", "transfer",
           "unpack_bits", "MissingKernelError", "backend_info", "kernels", "set_kernels", "use_kernels", "l0", "l0_penalty", "mask_model", "mask_weight",
           "masked_conv", "masked_conv1d", "masked_conv2d", "masked_conv3d", "masked_layers",
           "masked_linear", "nn", "sharded", "set_beta", "set_mode", "unmask_model"]
