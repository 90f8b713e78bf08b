"""Op schemas (torch.library namespace ``subind``), fake implementations and
autograd wiring.

Every op body asks :mod:`subind_fast.dispatch` for the backend serving its
device and op family; nothing else chooses a backend.  Backward ops return a
shape-[0] tensor for a gradient that was not requested (custom ops cannot
return None); the autograd formulas turn those into None.

Math (design.md §1), m = σ(β·s) | 1[s>0] | 1 and G = ∂L/∂y:
    masked_linear:  y = x·(θ⊙m)ᵀ + b
                    ∂x = G·W_eff, ∂θ = (Gᵀx)⊙m, ∂s = (Gᵀx)⊙θ⊙β·m(1−m), ∂b = Σ G
    masked_conv:    the same with the convolution as the GEMM
    mask_weight:    W_eff = θ⊙m
    sigmoid_sum:    Σσ(β·s) with ∂s = β·m(1−m)
Only inputs are saved for backward: W_eff and σ(β·s) are recomputed.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .dispatch import backend_for


def _is_dense(t: Tensor) -> bool:
    """Some permutation of the dims is contiguous (as ATen's
    is_non_overlapping_and_dense; size-1 dims do not matter)."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _same_dense_layout(weight: Tensor, logits: Tensor) -> bool:
    return weight.stride() == logits.stride() and _is_dense(weight)


def _aligned(weight: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
    """Kernels walk weight and logits in memory order when they share a dense
    layout (a transposed view stays a view); otherwise both go contiguous."""
    if (weight.is_contiguous() and logits.is_contiguous()) or _same_dense_layout(weight, logits):
        return weight, logits
    return weight.contiguous(), logits.contiguous()


def _like_weight(weight: Tensor, logits: Tensor, dtype: torch.dtype) -> Tensor:
    if _same_dense_layout(weight, logits):
        return torch.empty_like(weight, dtype=dtype)
    return weight.new_empty(weight.shape, dtype=dtype)


def _marker(t: Tensor) -> Tensor:
    return t.new_empty((0,))


def _none_if_marker(grad: Tensor, like: Tensor):
    return None if grad.shape != like.shape else grad


class DifferentiableOp:
    """One differentiable op with two entry points sharing its implementation
    and gradient formula:

    * the torch.library custom op (``subind::<name>``, with a fake impl and
      registered autograd) — what torch.compile traces and opcheck tests;
    * a plain autograd.Function for eager calls, which skips the dispatcher's
      Python layers (about 100 µs per layer and step on the CPU, as much as a
      small layer's GEMMs), and the bare implementation when no gradient is
      needed.

    The gradient formula calls ``ctx.backward_fn``: the backward custom op on
    the traced path, the backward implementation on the eager path.
    """

    def __init__(self, op, impl, backward_op, backward_impl, setup, grad):
        self.op, self.impl = op, impl

        def setup_traced(ctx, inputs, output):
            setup(ctx, inputs, output)
            ctx.backward_fn = backward_op

        op.register_autograd(grad, setup_context=setup_traced)

        def forward(ctx, *inputs):
            output = impl(*inputs)
            setup(ctx, inputs, output)
            ctx.backward_fn = backward_impl
            return output

        self._eager = type(f"{op._name}_eager", (torch.autograd.Function,), {
            "forward": staticmethod(forward),
            "backward": staticmethod(lambda ctx, g: grad(ctx, g)),
        })

    def __call__(self, *inputs):
        if torch.compiler.is_compiling():
            return self.op(*inputs)
        if torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad
                                           for t in inputs):
            return self._eager.apply(*inputs)
        return self.impl(*inputs)


# ---------------------------------------------------------------- mask_weight
def _mask_weight_impl(weight: Tensor, logits: Tensor, beta: float, mode: str) -> Tensor:
    weight, logits = _aligned(weight, logits)
    return backend_for(weight.device, "mask").mask_weight(weight, logits, beta, mode)


mask_weight = torch.library.custom_op("subind::mask_weight", _mask_weight_impl, mutates_args=())


@mask_weight.register_fake
def _(weight, logits, beta, mode):
    return _like_weight(weight, logits, weight.dtype)


def _mask_weight_backward_impl(grad_weff: Tensor, weight: Tensor, logits: Tensor, beta: float,
                         mode: str, need_weff: bool, need_weight_grad: bool,
                         need_logits_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    weight, logits = _aligned(weight, logits)
    return backend_for(weight.device, "mask").mask_weight_backward(
        grad_weff, weight, logits, beta, mode, need_weff, need_weight_grad, need_logits_grad)


mask_weight_backward = torch.library.custom_op("subind::mask_weight_backward", _mask_weight_backward_impl, mutates_args=())


@mask_weight_backward.register_fake
def _(grad_weff, weight, logits, beta, mode, need_weff, need_weight_grad, need_logits_grad):
    weff = _like_weight(weight, logits, weight.dtype) if need_weff else _marker(weight)
    gw = _like_weight(weight, logits, weight.dtype) if need_weight_grad else _marker(weight)
    gs = (_like_weight(weight, logits, logits.dtype) if need_logits_grad and mode == "soft"
          else _marker(logits))
    return weff, gw, gs


def _mask_weight_setup(ctx, inputs, output):
    weight, logits, beta, mode = inputs
    ctx.save_for_backward(weight, logits)
    ctx.beta, ctx.mode = beta, mode


def _mask_weight_grad(ctx, grad):
    weight, logits = ctx.saved_tensors
    _, gw, gs = ctx.backward_fn(grad, weight, logits, ctx.beta, ctx.mode, False,
                                     ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    return _none_if_marker(gw, weight), _none_if_marker(gs, logits), None, None


MASK_WEIGHT = DifferentiableOp(mask_weight, _mask_weight_impl, mask_weight_backward,
                               _mask_weight_backward_impl, _mask_weight_setup, _mask_weight_grad)


# -------------------------------------------------------------- masked_linear
def _masked_linear_impl(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor],
                  beta: float, mode: str) -> Tensor:
    weight, logits = _aligned(weight, logits)
    return backend_for(x.device, "linear").linear_forward(x, weight, logits, bias, beta, mode)


masked_linear = torch.library.custom_op("subind::masked_linear", _masked_linear_impl, mutates_args=())


@masked_linear.register_fake
def _(x, weight, logits, bias, beta, mode):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _masked_linear_backward_impl(grad: Tensor, x: Tensor, weight: Tensor, logits: Tensor,
                           beta: float, mode: str, needs: Sequence[bool]
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    weight, logits = _aligned(weight, logits)
    gx, gw, gs, gb = backend_for(x.device, "linear").linear_backward(
        grad.contiguous(), x, weight, logits, beta, mode, needs)
    return gx.contiguous(), gw, gs, gb


def _weight_grads_fake(weight, logits, mode, needs):
    gw = _like_weight(weight, logits, weight.dtype) if needs[1] else _marker(weight)
    gs = (_like_weight(weight, logits, logits.dtype) if needs[2] and mode == "soft"
          else _marker(logits))
    gb = weight.new_empty((weight.shape[0],)) if needs[3] else _marker(weight)
    return gw, gs, gb


masked_linear_backward = torch.library.custom_op("subind::masked_linear_backward", _masked_linear_backward_impl, mutates_args=())


@masked_linear_backward.register_fake
def _(grad, x, weight, logits, beta, mode, needs):
    gx = x.new_empty(x.shape) if needs[0] else _marker(x)
    return (gx, *_weight_grads_fake(weight, logits, mode, needs))


def _linear_setup(ctx, inputs, output):
    x, weight, logits, bias, beta, mode = inputs
    ctx.save_for_backward(x, weight, logits)
    ctx.beta, ctx.mode = beta, mode


def _linear_grad(ctx, grad):
    x, weight, logits = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:4])
    gx, gw, gs, gb = ctx.backward_fn(grad, x, weight, logits, ctx.beta, ctx.mode, needs)
    return (gx if needs[0] else None, gw if needs[1] else None,
            _none_if_marker(gs, logits) if needs[2] else None, gb if needs[3] else None,
            None, None)


MASKED_LINEAR = DifferentiableOp(masked_linear, _masked_linear_impl, masked_linear_backward,
                                 _masked_linear_backward_impl, _linear_setup, _linear_grad)


# ---------------------------------------------------------------- masked_conv
def _masked_conv_impl(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor], beta: float,
                mode: str, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int) -> Tensor:
    weight, logits = _aligned(weight, logits)
    return backend_for(x.device, "conv").conv_forward(x, weight, logits, bias, beta, mode,
                                                      stride, padding, dilation, groups)


masked_conv = torch.library.custom_op("subind::masked_conv", _masked_conv_impl, mutates_args=())


@masked_conv.register_fake
def _(x, weight, logits, bias, beta, mode, stride, padding, dilation, groups):
    zeros = [0] * (weight.dim() - 2)
    return torch.convolution(x, torch.empty_like(weight), bias, stride, padding, dilation,
                             False, zeros, groups)


def _masked_conv_backward_impl(grad: Tensor, x: Tensor, weight: Tensor, logits: Tensor, beta: float,
                         mode: str, stride: Sequence[int], padding: Sequence[int],
                         dilation: Sequence[int], groups: int, needs: Sequence[bool]
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    weight, logits = _aligned(weight, logits)
    gx, gw, gs, gb = backend_for(x.device, "conv").conv_backward(
        grad, x, weight, logits, beta, mode, stride, padding, dilation, groups, needs)
    return gx.contiguous(), gw, gs, gb


masked_conv_backward = torch.library.custom_op("subind::masked_conv_backward", _masked_conv_backward_impl, mutates_args=())


@masked_conv_backward.register_fake
def _(grad, x, weight, logits, beta, mode, stride, padding, dilation, groups, needs):
    gx = x.new_empty(x.shape) if needs[0] else _marker(x)
    return (gx, *_weight_grads_fake(weight, logits, mode, needs))


def _conv_setup(ctx, inputs, output):
    x, weight, logits, bias, beta, mode, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight, logits)
    ctx.beta, ctx.mode = beta, mode
    ctx.geometry = (list(stride), list(padding), list(dilation), groups)


def _conv_grad(ctx, grad):
    x, weight, logits = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:4])
    gx, gw, gs, gb = ctx.backward_fn(grad, x, weight, logits, ctx.beta, ctx.mode,
                                     *ctx.geometry, needs)
    return (gx if needs[0] else None, gw if needs[1] else None,
            _none_if_marker(gs, logits) if needs[2] else None, gb if needs[3] else None,
            None, None, None, None, None, None)


MASKED_CONV = DifferentiableOp(masked_conv, _masked_conv_impl, masked_conv_backward,
                               _masked_conv_backward_impl, _conv_setup, _conv_grad)


# ------------------------------------------------------- sigmoid_sum (the L0)
def _sigmoid_sum_impl(logits: Tensor, beta: float) -> Tensor:
    return backend_for(logits.device, "l0").sigmoid_sum(logits, beta)


sigmoid_sum = torch.library.custom_op("subind::sigmoid_sum", _sigmoid_sum_impl, mutates_args=())


@sigmoid_sum.register_fake
def _(logits, beta):
    return logits.new_empty(())


def _sigmoid_sum_backward_impl(grad: Tensor, logits: Tensor, beta: float) -> Tensor:
    return backend_for(logits.device, "l0").sigmoid_sum_backward(grad, logits, beta)


sigmoid_sum_backward = torch.library.custom_op("subind::sigmoid_sum_backward", _sigmoid_sum_backward_impl, mutates_args=())


@sigmoid_sum_backward.register_fake
def _(grad, logits, beta):
    return logits.new_empty(logits.shape)


def _sigmoid_sum_setup(ctx, inputs, output):
    logits, beta = inputs
    ctx.save_for_backward(logits)
    ctx.beta = beta


def _sigmoid_sum_grad(ctx, grad):
    (logits,) = ctx.saved_tensors
    return ctx.backward_fn(grad, logits, ctx.beta), None


SIGMOID_SUM = DifferentiableOp(sigmoid_sum, _sigmoid_sum_impl, sigmoid_sum_backward,
                               _sigmoid_sum_backward_impl, _sigmoid_sum_setup, _sigmoid_sum_grad)

ALL_OPS = (mask_weight, mask_weight_backward, masked_linear, masked_linear_backward,
           masked_conv, masked_conv_backward, sigmoid_sum, sigmoid_sum_backward)
DIFFERENTIABLE_OPS = (MASK_WEIGHT, MASKED_LINEAR, MASKED_CONV, SIGMOID_SUM)
