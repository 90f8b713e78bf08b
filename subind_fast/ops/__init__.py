"""The op layer: the one room that speaks ``torch.ops.subind``.

library (loads the compiled parts, registers every kernel, typed entry
points), modes (the mask modes), checks (argument checks), choice (fused or
eager kernels), functional (the stateless masked ops), noise (the sampled
modes' keys), mask_math (the per-element math in PyTorch ops), eager and
reference (kernels in PyTorch ops), composed (linear and convolution around
a mask pass), cuda/ (the Triton kernels, their launchers, the CUDA
registrations).  Importing it loads the compiled library."""
from . import library  # registers the torch.ops.subind kernels
from .choice import backend_info, kernels, set_kernels, use_kernels
from .extensions import MissingKernelError
from .functional import (l0, mask_weight, masked_conv, masked_conv1d, masked_conv2d,
                         masked_conv3d, masked_linear)
from .modes import MODES, Mode

__all__ = ["MODES", "MissingKernelError", "Mode", "backend_info", "kernels", "l0", "library",
           "mask_weight", "masked_conv", "masked_conv1d", "masked_conv2d", "masked_conv3d",
           "masked_linear", "set_kernels", "use_kernels"]
