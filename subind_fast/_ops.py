"""Op schemas (torch.library namespace ``subind``), fake implementations and
autograd wiring.

Every op body asks :mod:`subind_fast.dispatch` for the backend serving its
device and op family; nothing else chooses a backend.  Backward ops return a
shape-[0] tensor for a gradient that was not requested (custom ops cannot
return None); the autograd formulas turn those into None.

Math (design.md §1), m = σ(β·s) | 1[s>0] | 1 | a sampled mask, and G = ∂L/∂y:
    masked_linear:  y = x·(θ⊙m)ᵀ + b
                    ∂x = G·W_eff, ∂θ = (Gᵀx)⊙m, ∂s = (Gᵀx)⊙θ⊙β·m(1−m), ∂b = Σ G
    masked_conv:    the same with the convolution as the GEMM
    mask_weight:    W_eff = θ⊙m
    sigmoid_sum:    Σσ(β·s) with ∂s = β·m(1−m)
    adamw_step, sgd_step:  in-place optimizer updates of the free elements
Only inputs are saved for backward: W_eff and σ(β·s) are recomputed.

The sampled modes ("concrete": hard-concrete, "gumbel": Gumbel-sigmoid with a
straight-through gradient) take ``noise``, an int64 key [seed, stream]: the
mask's logistic noise is a function of the key and the element
(subind_fast/noise.py), so backward regenerates it from the 16-byte key and
these modes keep the same promise.  Every op in a sampled mode is served by
the backend of the ``sampled`` family (see dispatch.py); the slope in ∂s is
that of the sample (backends/reference.py: sampled_mask_and_slope).

β is a one-element tensor (a layer's buffer), so annealing it changes no
Python value that torch.compile would guard on, and GPU kernels read it on
the device.  Mixed precision: masked_linear and masked_conv follow autocast
as F.linear / F.conv* do — x, θ and the bias are cast to the autocast dtype,
the logits and β never (the mask math stays fp32) — through one rule
(:func:`autocast_inputs`) used by the eager path and by the ops' Autocast
dispatcher kernels, so eager and compiled code agree on dtypes.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ._validation import SAMPLED_MODES, TRAINING_MODES
from .dispatch import backend_for

# Autocast kernels for the ops are registered in this fragment of the namespace.
_LIBRARY = torch.library.Library("subind", "FRAGMENT")
_AUTOCAST_DEVICES = ("cpu", "cuda")


def _autocast_eligible(t) -> bool:
    """What autocast casts: floating tensors other than float64 (as ATen's autocast)."""
    return isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float64


def _autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (never for meta: no autocast there)."""
    return device_type != "meta" and torch.is_autocast_enabled(device_type)


def autocast_inputs(inputs: tuple, cast_positions: Sequence[int], device_type: str) -> tuple:
    """``inputs`` with the tensors at ``cast_positions`` in the autocast dtype
    when autocast is enabled for ``device_type`` (unchanged otherwise)."""
    if not _autocast_on(device_type):
        return inputs
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if i in cast_positions and _autocast_eligible(t) else t
                 for i, t in enumerate(inputs))


def _register_autocast(op, cast_positions: Sequence[int]) -> None:
    """The op under autocast: cast per the rule, then run with autocast off."""
    name = op._name  # the name within the subind namespace
    for device_type in _AUTOCAST_DEVICES:
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(_keyset, *args, _device_type=device_type, _excluded=excluded):
            # Cast first: autocast reads as disabled once its key is excluded.
            args = autocast_inputs(args, cast_positions, _device_type)
            with torch._C._ExcludeDispatchKeyGuard(_excluded):
                return op(*args)

        _LIBRARY.impl(name, kernel, key, with_keyset=True)


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


def _serving(device: torch.device, family: str, mode: str):
    """The backend for an op of ``family`` in ``mode`` (sampled modes: the sampled family)."""
    return backend_for(device, "sampled" if mode in SAMPLED_MODES else family)


def _marker(t: Tensor) -> Tensor:
    return t.new_empty((0,))


def _none_if_marker(grad: Tensor, like: Tensor):
    return None if grad.shape != like.shape else grad


class EagerFastPath:
    """One op with two entry points sharing its implementation: the
    torch.library custom op (``subind::<name>``, with its schema, fake impl and
    mutation annotations) — what torch.compile traces and opcheck tests — and,
    for eager calls, the implementation itself, which skips the dispatcher's
    Python layers (about 100 µs per call on the CPU, as much as a small
    layer's GEMMs)."""

    def __init__(self, op, impl):
        self.op, self.impl = op, impl

    def __call__(self, *inputs):
        if torch.compiler.is_compiling() or _without_data(inputs):
            return self.op(*inputs)  # the registered op: its fake kernel serves shapes
        return self.impl(*inputs)


class DifferentiableOp(EagerFastPath):
    """A differentiable op: the custom op with registered autograd, and for
    eager calls a plain autograd.Function (or the bare implementation when no
    gradient is needed).  The gradient formula calls ``ctx.backward_fn``: the
    backward custom op on the traced path, the backward implementation on the
    eager path.  ``autocast_cast`` lists the input positions autocast casts
    (see :func:`autocast_inputs`); callers cast before validating, and the
    eager path then runs with autocast off so nothing inside re-casts."""

    def __init__(self, op, impl, backward_op, backward_impl, setup, grad,
                 autocast_cast: Sequence[int] = ()):
        super().__init__(op, impl)
        self.autocast_cast = tuple(autocast_cast)
        if self.autocast_cast:
            _register_autocast(op, self.autocast_cast)

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
        if torch.compiler.is_compiling() or _without_data(inputs):
            return self.op(*inputs)  # the registered op: its fake kernel serves shapes
        device_type = next(t.device.type for t in inputs if isinstance(t, Tensor))
        if self.autocast_cast and _autocast_on(device_type):
            inputs = autocast_inputs(inputs, self.autocast_cast, device_type)
            with torch.autocast(device_type, enabled=False):
                return self._call_eager(inputs)
        return self._call_eager(inputs)

    def _call_eager(self, inputs):
        if torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad
                                           for t in inputs):
            return self._eager.apply(*inputs)
        return self.impl(*inputs)


_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)


def _without_data(inputs) -> bool:
    """Meta or fake tensors (memory planning): there is no data to compute on.
    On the hot path: plain tensors need one type and one device check."""
    for t in inputs:
        if isinstance(t, Tensor):
            if t.is_meta:
                return True
            if type(t) not in _PLAIN_TENSORS:
                from torch._subclasses.fake_tensor import is_fake

                if is_fake(t):
                    return True
    return False


# ---------------------------------------------------------------- mask_weight
def _mask_weight_impl(weight: Tensor, logits: Tensor, beta: Tensor, mode: str,
                      noise: Optional[Tensor] = None) -> Tensor:
    weight, logits = _aligned(weight, logits)
    if mode in SAMPLED_MODES:
        return backend_for(weight.device, "sampled").sampled_mask_weight(weight, logits, beta,
                                                                        mode, noise)
    return backend_for(weight.device, "mask").mask_weight(weight, logits, beta, mode)


mask_weight = torch.library.custom_op("subind::mask_weight", _mask_weight_impl, mutates_args=())


@mask_weight.register_fake
def _(weight, logits, beta, mode, noise=None):
    return _like_weight(weight, logits, weight.dtype)


def _mask_weight_backward_impl(grad_weff: Tensor, weight: Tensor, logits: Tensor, beta: Tensor,
                         mode: str, need_weff: bool, need_weight_grad: bool,
                         need_logits_grad: bool, noise: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor, Tensor]:
    weight, logits = _aligned(weight, logits)
    if mode in SAMPLED_MODES:
        return backend_for(weight.device, "sampled").sampled_mask_weight_backward(
            grad_weff, weight, logits, beta, mode, noise, need_weff, need_weight_grad,
            need_logits_grad)
    return backend_for(weight.device, "mask").mask_weight_backward(
        grad_weff, weight, logits, beta, mode, need_weff, need_weight_grad, need_logits_grad)


mask_weight_backward = torch.library.custom_op("subind::mask_weight_backward", _mask_weight_backward_impl, mutates_args=())


@mask_weight_backward.register_fake
def _(grad_weff, weight, logits, beta, mode, need_weff, need_weight_grad, need_logits_grad,
      noise=None):
    weff = _like_weight(weight, logits, weight.dtype) if need_weff else _marker(weight)
    gw = _like_weight(weight, logits, weight.dtype) if need_weight_grad else _marker(weight)
    gs = (_like_weight(weight, logits, logits.dtype) if need_logits_grad and mode in TRAINING_MODES
          else _marker(logits))
    return weff, gw, gs


def _mask_weight_setup(ctx, inputs, output):
    weight, logits, beta, mode, *noise = inputs
    ctx.save_for_backward(weight, logits, beta, *noise)
    ctx.mode = mode


def _mask_weight_grad(ctx, grad):
    weight, logits, beta, *noise = ctx.saved_tensors
    _, gw, gs = ctx.backward_fn(grad, weight, logits, beta, ctx.mode, False,
                                ctx.needs_input_grad[0], ctx.needs_input_grad[1], *noise)
    return _none_if_marker(gw, weight), _none_if_marker(gs, logits), None, None, None


MASK_WEIGHT = DifferentiableOp(mask_weight, _mask_weight_impl, mask_weight_backward,
                               _mask_weight_backward_impl, _mask_weight_setup, _mask_weight_grad)


# -------------------------------------------------------------- masked_linear
def _masked_linear_impl(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor],
                  beta: Tensor, mode: str, noise: Optional[Tensor] = None) -> Tensor:
    weight, logits = _aligned(weight, logits)
    y = _serving(x.device, "linear", mode).linear_forward(x, weight, logits, bias, beta, mode,
                                                          noise)
    # Backends reshape a 2-D GEMM result to x's batch shape: a view of an
    # internal tensor, which autograd forbids modifying in place (timm's
    # `qkv += bias`).  detach() gives the same memory, not marked as a view.
    return y.detach() if y._is_view() else y


masked_linear = torch.library.custom_op("subind::masked_linear", _masked_linear_impl, mutates_args=())


@masked_linear.register_fake
def _(x, weight, logits, bias, beta, mode, noise=None):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _masked_linear_backward_impl(grad: Tensor, x: Tensor, weight: Tensor, logits: Tensor,
                           beta: Tensor, mode: str, needs: Sequence[bool],
                           noise: Optional[Tensor] = None
                           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    weight, logits = _aligned(weight, logits)
    gx, gw, gs, gb = _serving(x.device, "linear", mode).linear_backward(
        grad.contiguous(), x, weight, logits, beta, mode, needs, noise)
    return gx.contiguous(), gw, gs, gb


def _weight_grads_fake(weight, logits, mode, needs):
    gw = _like_weight(weight, logits, weight.dtype) if needs[1] else _marker(weight)
    gs = (_like_weight(weight, logits, logits.dtype) if needs[2] and mode in TRAINING_MODES
          else _marker(logits))
    gb = weight.new_empty((weight.shape[0],)) if needs[3] else _marker(weight)
    return gw, gs, gb


masked_linear_backward = torch.library.custom_op("subind::masked_linear_backward", _masked_linear_backward_impl, mutates_args=())


@masked_linear_backward.register_fake
def _(grad, x, weight, logits, beta, mode, needs, noise=None):
    gx = x.new_empty(x.shape) if needs[0] else _marker(x)
    return (gx, *_weight_grads_fake(weight, logits, mode, needs))


def _linear_setup(ctx, inputs, output):
    x, weight, logits, bias, beta, mode, *noise = inputs
    ctx.save_for_backward(x, weight, logits, beta, *noise)
    ctx.mode = mode


def _linear_grad(ctx, grad):
    x, weight, logits, beta, *noise = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:4])
    gx, gw, gs, gb = ctx.backward_fn(grad, x, weight, logits, beta, ctx.mode, needs, *noise)
    return (gx if needs[0] else None, gw if needs[1] else None,
            _none_if_marker(gs, logits) if needs[2] else None, gb if needs[3] else None,
            None, None, None)


MASKED_LINEAR = DifferentiableOp(masked_linear, _masked_linear_impl, masked_linear_backward,
                                 _masked_linear_backward_impl, _linear_setup, _linear_grad,
                                 autocast_cast=(0, 1, 3))  # x, weight, bias


# ---------------------------------------------------------------- masked_conv
def _masked_conv_impl(x: Tensor, weight: Tensor, logits: Tensor, bias: Optional[Tensor], beta: Tensor,
                mode: str, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], groups: int, noise: Optional[Tensor] = None) -> Tensor:
    weight, logits = _aligned(weight, logits)
    return _serving(x.device, "conv", mode).conv_forward(
        x, weight, logits, bias, beta, mode, stride, padding, dilation, groups, noise)


masked_conv = torch.library.custom_op("subind::masked_conv", _masked_conv_impl, mutates_args=())


@masked_conv.register_fake
def _(x, weight, logits, bias, beta, mode, stride, padding, dilation, groups, noise=None):
    zeros = [0] * (weight.dim() - 2)
    return torch.convolution(x, torch.empty_like(weight), bias, stride, padding, dilation,
                             False, zeros, groups)


def _masked_conv_backward_impl(grad: Tensor, x: Tensor, weight: Tensor, logits: Tensor, beta: Tensor,
                         mode: str, stride: Sequence[int], padding: Sequence[int],
                         dilation: Sequence[int], groups: int, needs: Sequence[bool],
                         noise: Optional[Tensor] = None
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    weight, logits = _aligned(weight, logits)
    gx, gw, gs, gb = _serving(x.device, "conv", mode).conv_backward(
        grad, x, weight, logits, beta, mode, stride, padding, dilation, groups, needs, noise)
    return gx.contiguous(), gw, gs, gb


masked_conv_backward = torch.library.custom_op("subind::masked_conv_backward", _masked_conv_backward_impl, mutates_args=())


@masked_conv_backward.register_fake
def _(grad, x, weight, logits, beta, mode, stride, padding, dilation, groups, needs, noise=None):
    gx = x.new_empty(x.shape) if needs[0] else _marker(x)
    return (gx, *_weight_grads_fake(weight, logits, mode, needs))


def _conv_setup(ctx, inputs, output):
    x, weight, logits, bias, beta, mode, stride, padding, dilation, groups, *noise = inputs
    ctx.save_for_backward(x, weight, logits, beta, *noise)
    ctx.mode = mode
    ctx.geometry = (list(stride), list(padding), list(dilation), groups)


def _conv_grad(ctx, grad):
    x, weight, logits, beta, *noise = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:4])
    gx, gw, gs, gb = ctx.backward_fn(grad, x, weight, logits, beta, ctx.mode,
                                     *ctx.geometry, needs, *noise)
    return (gx if needs[0] else None, gw if needs[1] else None,
            _none_if_marker(gs, logits) if needs[2] else None, gb if needs[3] else None,
            None, None, None, None, None, None, None)


MASKED_CONV = DifferentiableOp(masked_conv, _masked_conv_impl, masked_conv_backward,
                               _masked_conv_backward_impl, _conv_setup, _conv_grad,
                               autocast_cast=(0, 1, 3))  # x, weight, bias


# ------------------------------------------------------- sigmoid_sum (the L0)
def _sigmoid_sum_impl(logits: Tensor, beta: Tensor) -> Tensor:
    return backend_for(logits.device, "l0").sigmoid_sum(logits, beta)


sigmoid_sum = torch.library.custom_op("subind::sigmoid_sum", _sigmoid_sum_impl, mutates_args=())


@sigmoid_sum.register_fake
def _(logits, beta):
    return logits.new_empty(())


def _sigmoid_sum_backward_impl(grad: Tensor, logits: Tensor, beta: Tensor) -> Tensor:
    return backend_for(logits.device, "l0").sigmoid_sum_backward(grad, logits, beta)


sigmoid_sum_backward = torch.library.custom_op("subind::sigmoid_sum_backward", _sigmoid_sum_backward_impl, mutates_args=())


@sigmoid_sum_backward.register_fake
def _(grad, logits, beta):
    return logits.new_empty(logits.shape)


def _sigmoid_sum_setup(ctx, inputs, output):
    logits, beta = inputs
    ctx.save_for_backward(logits, beta)


def _sigmoid_sum_grad(ctx, grad):
    logits, beta = ctx.saved_tensors
    return ctx.backward_fn(grad, logits, beta), None


SIGMOID_SUM = DifferentiableOp(sigmoid_sum, _sigmoid_sum_impl, sigmoid_sum_backward,
                               _sigmoid_sum_backward_impl, _sigmoid_sum_setup, _sigmoid_sum_grad)



# ----------------------------------------- fused frozen-mask optimizer steps
# In place on the parameter and its state; frozen elements (packed bits, 1 =
# frozen) and their state stay bit-identical.  The math is in
# csrc/include/subind/optim_math.h and backends/reference.py.
def _adamw_step_impl(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
                     max_exp_avg_sq: Tensor, frozen_bits: Tensor, lr: float, beta1: float,
                     beta2: float, eps: float, weight_decay: float, step_size: float,
                     inv_sqrt_bias2: float) -> None:
    backend_for(param.device, "optim").adamw_step(
        param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr, beta1, beta2, eps,
        weight_decay, step_size, inv_sqrt_bias2)


adamw_step = torch.library.custom_op(
    "subind::adamw_step", _adamw_step_impl,
    mutates_args=("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"))


@adamw_step.register_fake
def _(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr, beta1, beta2, eps,
      weight_decay, step_size, inv_sqrt_bias2):
    return None


def _sgd_step_impl(param: Tensor, grad: Tensor, momentum_buffer: Tensor, frozen_bits: Tensor,
                   lr: float, momentum: float, dampening: float, weight_decay: float,
                   nesterov: bool, first_step: bool) -> None:
    backend_for(param.device, "optim").sgd_step(
        param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening, weight_decay,
        nesterov, first_step)


sgd_step = torch.library.custom_op("subind::sgd_step", _sgd_step_impl,
                                   mutates_args=("param", "momentum_buffer"))


@sgd_step.register_fake
def _(param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening, weight_decay, nesterov,
      first_step):
    return None


ADAMW_STEP = EagerFastPath(adamw_step, _adamw_step_impl)
SGD_STEP = EagerFastPath(sgd_step, _sgd_step_impl)

ALL_OPS = (mask_weight, mask_weight_backward, masked_linear, masked_linear_backward,
           masked_conv, masked_conv_backward, sigmoid_sum, sigmoid_sum_backward, adamw_step,
           sgd_step)
DIFFERENTIABLE_OPS = (MASK_WEIGHT, MASKED_LINEAR, MASKED_CONV, SIGMOID_SUM)
