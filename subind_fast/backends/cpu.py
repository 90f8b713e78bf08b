"""The CPU backend: our compiled C++ kernels (csrc/cpu).

Element-wise mask passes come from the shared compiled backend; masked linear
layers use the blocked schedule of csrc/cpu/masked_linear.cpp, which keeps
W_eff and ∂W_eff in cache and never writes either at full size when the batch
is small.  This module decides the block height and owns the scratch buffers
the kernels write W_eff into (one per thread, grown to the largest layer seen
and reused, so no step pays for page-faulting fresh weight-sized memory).
"""
from __future__ import annotations

import threading

import torch

from .._validation import MODE_CODES
from .base import FAMILIES
from .compiled import CompiledBackend

# A block of W_eff plus the matching rows of θ, s and ∂W_eff should sit in a
# 1 MiB L2 together: 256 KiB per array.
BLOCK_BYTES = 256 * 1024


def block_rows_for(m: int, n: int, k: int, itemsize: int) -> int:
    """Rows of the weight processed per block.  Blocking makes ∂x accumulate
    across blocks (one extra pass over the M×K input per block) and re-reads x
    in the forward, which only pays while M is no larger than the block."""
    rows = max(16, (BLOCK_BYTES // max(1, k * itemsize)) // 16 * 16)
    return rows if (m <= rows and rows < n) else n


class _Scratch(threading.local):
    def __init__(self):
        self.buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, slot: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self.buffers.get((slot, dtype))
        if buf is None or buf.numel() < numel:
            buf = torch.empty(max(numel, 1), dtype=dtype)
            self.buffers[(slot, dtype)] = buf
        return buf


class CpuBackend(CompiledBackend):
    name = "cpu"
    extension = "_C"
    devices = frozenset({"cpu"})
    families = frozenset(FAMILIES)

    def __init__(self):
        self._scratch = _Scratch()

    def release_scratch(self) -> None:
        """Free this thread's scratch buffers (they are rebuilt on demand)."""
        self._scratch.buffers.clear()

    @staticmethod
    def _blockable(weight, logits) -> bool:
        return weight.dim() == 2 and weight.is_contiguous() and logits.is_contiguous()

    def linear_forward(self, x, weight, logits, bias, beta, mode, noise=None):
        # The blocked kernel computes the deterministic masks; a sampled mask
        # is one C++ element-wise pass (sampled family) around ATen's GEMM.
        if noise is not None or not self._blockable(weight, logits):
            return super().linear_forward(x, weight, logits, bias, beta, mode, noise)
        n, k = weight.shape
        x2 = x.reshape(-1, k)
        rows = block_rows_for(x2.shape[0], n, k, weight.element_size())
        scratch = self._scratch.get("weff", rows * k, weight.dtype)
        y = self._lib.masked_linear_forward(x2, weight, logits, bias, beta, MODE_CODES[mode], rows,
                                            scratch)
        return y.reshape(*x.shape[:-1], n)

    def linear_backward(self, grad, x, weight, logits, beta, mode, needs, noise=None):
        if noise is not None or not self._blockable(weight, logits):
            return super().linear_backward(grad, x, weight, logits, beta, mode, needs, noise)
        need_x, need_w, need_s, need_b = needs
        n, k = weight.shape
        g2 = grad.reshape(-1, n)
        x2 = x.reshape(-1, k)
        rows = block_rows_for(x2.shape[0], n, k, weight.element_size())
        # W_eff needs a whole-matrix buffer only in the unblocked schedule.
        scratch_weff = self._scratch.get("weff", (rows if rows < n else n) * k, weight.dtype)
        grad_in_place = need_w or (logits.dtype == weight.dtype)
        scratch_grad = (self._scratch.get("grad", rows * k, weight.dtype) if not grad_in_place
                        else weight.new_empty(0))
        gx, gw, gs = self._lib.masked_linear_backward(
            g2, x2, weight, logits, beta, MODE_CODES[mode], need_x, need_w, need_s, rows,
            scratch_weff, scratch_grad)
        gx = gx.reshape(x.shape) if need_x else gx
        gb = g2.sum(0) if need_b else grad.new_empty(0)
        return gx, gw, gs, gb

    # -- l0 and the fused frozen-mask optimizer steps (csrc/cpu/optim.cpp) ------
    def sigmoid_sum(self, logits, beta):
        return self._lib.sigmoid_sum(logits, beta)

    def sigmoid_sum_backward(self, grad, logits, beta):
        return self._lib.sigmoid_sum_backward(grad, logits, beta)

    def adamw_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr,
                   beta1, beta2, eps, weight_decay, step_size, inv_sqrt_bias2):
        self._lib.adamw_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr,
                             beta1, beta2, eps, weight_decay, step_size, inv_sqrt_bias2)

    def sgd_step(self, param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening,
                 weight_decay, nesterov, first_step):
        self._lib.sgd_step(param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening,
                           weight_decay, nesterov, first_step)
