"""Backends whose element-wise passes are our compiled kernels: ``cpu``
(csrc/cpu, C++/OpenMP; see cpu.py) and ``cuda`` (csrc/cuda).  Both extensions
expose the same mask functions with the same math
(csrc/include/subind/mask_math.h); the GEMMs are ATen's (base.ComposedBackend)."""
from __future__ import annotations

from .. import _extension
from .._validation import MODE_CODES
from .base import ComposedBackend


class CompiledBackend(ComposedBackend):
    """The mask family from a compiled extension, linear and conv composed."""

    extension: str = ""

    @property
    def _lib(self):
        return _extension.load(self.extension)

    def mask_weight(self, weight, logits, beta, mode):
        return self._lib.mask_weight(weight, logits, beta, MODE_CODES[mode])

    def mask_weight_backward(self, grad_weff, weight, logits, beta, mode, need_weff,
                             need_weight_grad, need_logits_grad):
        return tuple(self._lib.mask_weight_backward(
            grad_weff, weight, logits, beta, MODE_CODES[mode], need_weff, need_weight_grad,
            need_logits_grad))

    def sampled_mask_weight(self, weight, logits, beta, mode, noise):
        return self._lib.sampled_mask_weight(weight, logits, beta, noise, MODE_CODES[mode])

    def sampled_mask_weight_backward(self, grad_weff, weight, logits, beta, mode, noise,
                                     need_weff, need_weight_grad, need_logits_grad):
        return tuple(self._lib.sampled_mask_weight_backward(
            grad_weff, weight, logits, beta, noise, MODE_CODES[mode], need_weff,
            need_weight_grad, need_logits_grad))


class CudaBackend(CompiledBackend):
    """csrc/cuda: the element-wise mask passes (deterministic and sampled)
    around cuDNN / cuBLAS.  It has no L0 or optimizer kernels; on CUDA those
    run on the triton backend."""

    name = "cuda"
    extension = "_C_cuda"
    devices = frozenset({"cuda"})
    families = frozenset({"mask", "linear", "conv", "sampled"})
