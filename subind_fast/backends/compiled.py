"""Backends whose element-wise passes are our compiled kernels: ``cpu``
(csrc/cpu, C++/OpenMP) and ``cuda`` (csrc/cuda).  Both extensions expose the
same functions with the same math (csrc/include/subind/mask_math.h); the GEMMs
are ATen's (see base.ComposedBackend)."""
from __future__ import annotations

from .. import _extension
from .._validation import MODE_CODES
from .base import ComposedBackend


class CompiledBackend(ComposedBackend):
    def __init__(self, name: str, extension: str):
        self.name = name
        self._extension = extension

    @property
    def _lib(self):
        return _extension.load(self._extension)

    def mask_weight(self, weight, logits, beta, mode):
        return self._lib.mask_weight(weight, logits, beta, MODE_CODES[mode])

    def mask_weight_backward(self, grad_weff, weight, logits, beta, mode, need_weff,
                             need_weight_grad, need_logits_grad):
        return tuple(self._lib.mask_weight_backward(
            grad_weff, weight, logits, beta, MODE_CODES[mode], need_weff, need_weight_grad,
            need_logits_grad))

    def sigmoid_sum(self, logits, beta):
        return self._lib.sigmoid_sum(logits, beta)

    def sigmoid_sum_backward(self, grad, logits, beta):
        return self._lib.sigmoid_sum_backward(grad, logits, beta)

    def _optimizer_kernel(self, name: str):
        kernel = getattr(self._lib, name, None)
        if kernel is None:
            raise _extension.MissingKernelError(
                f"the {self.name} backend has no {name} kernel; on CUDA the optimizer steps run "
                "on the triton backend (unset SUBIND_BACKEND)")
        return kernel

    def adamw_step(self, *args):
        self._optimizer_kernel("adamw_step")(*args)

    def sgd_step(self, *args):
        self._optimizer_kernel("sgd_step")(*args)
