"""Launchers for the Triton kernels (triton_kernels.py): allocate, compute
strides, launch — the element-wise mask passes, the fused masked GEMMs of
linear layers, the L0 penalty and the frozen-mask optimizer steps, for the
deterministic modes (ops/cuda/kernels.py sends the sampled modes elsewhere)."""
from __future__ import annotations

import os

import torch
import triton

from ..composed import not_requested
from ..modes import mode as mode_of
from . import triton_kernels as K


def _ieee(dtype: torch.dtype) -> bool:
    """fp32 dots in IEEE unless PyTorch itself would use TF32 for this matmul."""
    return dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"


def _check_gemm_dtype(t: torch.Tensor) -> None:
    if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"the triton backend computes in fp32/bf16/fp16, got {t.dtype}; "
                        "use the eager kernels for float64 (subind_fast.set_kernels('eager'))")


def _deterministic(mode: str) -> int:
    """The mode's code; the Triton kernels compute the deterministic masks
    only (ops/cuda/kernels.py routes the sampled modes elsewhere)."""
    spec = mode_of(mode)
    if spec.sampled:
        raise ValueError(f"the Triton kernels have no sampled masks, got mode {mode!r}; "
                         "ops/cuda/kernels.py routes those modes to the composed path")
    return spec.code


def _device_scalar(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A one-element tensor (β, ∂L/∂penalty) as fp32 on ``like``'s device, as
    the kernels read it (no copy when it is one; no host sync)."""
    return value.reshape(1).to(device=like.device, dtype=torch.float32, non_blocking=True)


def _elementwise_grid(n: int):
    return (triton.cdiv(n, K.ELEMENTWISE_BLOCK),)


def _matmul(a, b, c, M, N, Kdim, a_strides, b_strides, c_strides, *, beta, bias=None,
            theta=None, logits=None, mode="soft", prologue=False, grads=None, grad_l0=None):
    """acc = A·B over explicit strides, with the epilogue/prologue chosen by the
    arguments (see masked_matmul_kernel); ``grad_l0`` (a one-element fp32
    device tensor) adds the L0 penalty's gradient in the gradient epilogue."""
    gs, gtheta, weff = grads if grads is not None else (None, None, None)
    dummy = a  # never dereferenced when the matching constexpr switch is off
    t_strides = (theta.stride(0), theta.stride(1)) if (grads is not None) else (0, 0)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)

    K.masked_matmul_kernel[grid](
        a, b, c if c is not None else dummy, bias if bias is not None else dummy,
        theta if theta is not None else dummy, logits if logits is not None else dummy,
        gs if gs is not None else dummy, gtheta if gtheta is not None else dummy,
        weff if weff is not None else dummy, grad_l0 if grad_l0 is not None else beta,
        M, N, Kdim, beta, *a_strides, *b_strides, *c_strides, *t_strides,
        MODE=_deterministic(mode), HAS_BIAS=bias is not None, MASK_B_PROLOGUE=prologue,
        MASK_GRAD_EPILOGUE=grads is not None, WANT_S=gs is not None,
        WANT_THETA=gtheta is not None, WANT_WEFF=weff is not None,
        HAS_GRAD_L0=grad_l0 is not None, IEEE=_ieee(a.dtype))


class TritonKernels:
    """The launchers; ``forward_variant`` picks the masked GEMM's forward
    schedule: "prepass" (W_eff formed by an element-wise pass, then a plain
    GEMM) or "prologue" (the mask applied to each B tile in the GEMM)."""

    def __init__(self, forward_variant: str | None = None):
        variant = forward_variant or os.environ.get("SUBIND_TRITON_FWD", "prepass")
        if variant not in ("prepass", "prologue"):
            raise ValueError(f"SUBIND_TRITON_FWD must be 'prepass' or 'prologue', got {variant!r}")
        self.forward_variant = variant

    # -- element-wise ---------------------------------------------------------
    def mask_weight(self, weight, logits, beta, mode, l0_sum=None):
        """W_eff; with ``l0_sum`` (a zeroed fp32 scalar on the device, soft
        mode) the pass also adds Σσ(β·s) to it."""
        out = torch.empty_like(weight)
        n = weight.numel()
        if n:
            K.mask_weight_kernel[_elementwise_grid(n)](
                weight, logits, out, l0_sum if l0_sum is not None else out, n,
                _device_scalar(beta, logits), MODE=_deterministic(mode), L0=l0_sum is not None,
                BLOCK=K.ELEMENTWISE_BLOCK)
        return out

    def mask_weight_backward(self, grad_weff, weight, logits, beta, mode, need_weff,
                             need_weight_grad, need_logits_grad):
        need_logits_grad = need_logits_grad and mode_of(mode).trains_logits
        g = grad_weff
        if g.stride() != weight.stride() or g.dtype != weight.dtype:
            g = torch.empty_like(weight).copy_(grad_weff)  # the kernel walks θ's memory order
        gs = torch.empty_like(logits) if need_logits_grad else not_requested(logits)
        gw = torch.empty_like(weight) if need_weight_grad else not_requested(weight)
        weff = torch.empty_like(weight) if need_weff else not_requested(weight)
        n = weight.numel()
        if n:
            K.mask_backward_kernel[_elementwise_grid(n)](
                g, weight, logits, gs, gw, weff, n, _device_scalar(beta, logits),
                MODE=_deterministic(mode),
                WANT_S=need_logits_grad, WANT_THETA=need_weight_grad, WANT_WEFF=need_weff,
                BLOCK=K.ELEMENTWISE_BLOCK)
        return weff, gw, gs

    def sigmoid_sum(self, logits, beta):
        s = logits.contiguous()
        out = torch.zeros((), dtype=torch.float32, device=s.device)
        if s.numel():
            K.sigmoid_sum_kernel[_elementwise_grid(s.numel())](
                s, out, s.numel(), _device_scalar(beta, s), BLOCK=K.ELEMENTWISE_BLOCK)
        return out.to(logits.dtype)

    def sigmoid_sum_backward(self, grad, logits, beta):
        s = logits.contiguous()
        out = torch.empty_like(s)
        if s.numel():
            K.sigmoid_slope_kernel[_elementwise_grid(s.numel())](
                s, grad.to(torch.float32).reshape(1), out, s.numel(), _device_scalar(beta, s),
                BLOCK=K.ELEMENTWISE_BLOCK)
        return out

    # -- fused masked linear ----------------------------------------------------
    def linear_forward(self, x, weight, logits, bias, beta, mode, l0_sum=None):
        """y; with ``l0_sum`` (soft mode) the mask pre-pass also sums the L0
        penalty into it (the prologue schedule has no pre-pass, so the penalty
        takes the pre-pass schedule)."""
        _check_gemm_dtype(x)
        n_out, n_in = weight.shape
        x2 = x.reshape(-1, n_in)
        M = x2.shape[0]
        y = torch.empty((M, n_out), dtype=x.dtype, device=x.device)
        if self.forward_variant == "prologue" and mode != "none" and l0_sum is None:
            b, prologue = weight, True
        else:
            b, prologue = self.mask_weight(weight, logits, beta, mode, l0_sum), False
        # B = W_effᵀ (K×N): element (k, n) lives at n·stride(0) + k·stride(1).
        _matmul(x2, b, y, M, n_out, n_in, x2.stride(), (b.stride(1), b.stride(0)), y.stride(),
                beta=_device_scalar(beta, logits), bias=bias,
                logits=logits if prologue else None, mode=mode, prologue=prologue)
        return y.reshape(*x.shape[:-1], n_out)

    def linear_forward_l0(self, x, weight, logits, bias, beta, mode):
        """(y, Σσ(β·s)) from one mask pass (soft mode: the only training mode here)."""
        if not mode_of(mode).trains_logits:
            raise ValueError(f"masked_linear_l0 on the Triton kernels: the L0 penalty belongs "
                             f"to a training mode, got {mode!r}")
        l0_sum = torch.zeros(1, dtype=torch.float32, device=logits.device)
        y = self.linear_forward(x, weight, logits, bias, beta, mode, l0_sum)
        return y, l0_sum.reshape(()).to(logits.dtype)

    def linear_backward(self, grad, x, weight, logits, beta, mode, needs, grad_l0=None):
        _check_gemm_dtype(x)
        need_x, need_w, need_s, need_b = needs
        need_s = need_s and mode_of(mode).trains_logits
        n_out, n_in = weight.shape
        g2 = grad.reshape(-1, n_out)
        x2 = x.reshape(-1, n_in)
        M = g2.shape[0]
        if need_w or need_s:
            gs = torch.empty_like(logits) if need_s else None
            gw = torch.empty_like(weight) if need_w else None
            weff = torch.empty_like(weight) if need_x else None
            # ∂W_eff[n, k] = Σ_m G[m, n]·x[m, k]: A = Gᵀ (N×M), B = x (M×K); the
            # epilogue writes ∂s, ∂θ and W_eff straight from the accumulator.
            _matmul(g2, x2, None, n_out, n_in, M, (g2.stride(1), g2.stride(0)), x2.stride(),
                    (0, 0), beta=_device_scalar(beta, logits), theta=weight, logits=logits,
                    mode=mode, grads=(gs, gw, weff),
                    grad_l0=_device_scalar(grad_l0, logits) if (need_s and grad_l0 is not None)
                    else None)
        else:
            gs = gw = None
            weff = self.mask_weight(weight, logits, beta, mode) if need_x else None
        gx = not_requested(x)
        if need_x:
            gx = torch.empty((M, n_in), dtype=x.dtype, device=x.device)
            _matmul(g2, weff, gx, M, n_in, n_out, g2.stride(), weff.stride(), gx.stride(),
                    beta=_device_scalar(beta, logits))
            gx = gx.reshape(x.shape)
        gb = g2.sum(0, dtype=torch.float32).to(grad.dtype) if need_b else not_requested(grad)
        return (gx, gw if gw is not None else not_requested(weight),
                gs if gs is not None else not_requested(logits), gb)

    # -- fused frozen-mask optimizer steps ---------------------------------------
    def adamw_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, frozen_bits, lr, beta1,
                   beta2, eps, weight_decay, step_size, inv_sqrt_bias2):
        n = param.numel()
        if n:
            K.adamw_kernel[_elementwise_grid(n)](
                param, grad, exp_avg, exp_avg_sq,
                max_exp_avg_sq if max_exp_avg_sq.numel() else param,
                frozen_bits if frozen_bits.numel() else param, n, lr, beta1, beta2, eps,
                weight_decay, step_size, inv_sqrt_bias2, AMSGRAD=bool(max_exp_avg_sq.numel()),
                HAS_BITS=bool(frozen_bits.numel()), BLOCK=K.ELEMENTWISE_BLOCK)

    def sgd_step(self, param, grad, momentum_buffer, frozen_bits, lr, momentum, dampening,
                 weight_decay, nesterov, first_step):
        n = param.numel()
        if n:
            K.sgd_kernel[_elementwise_grid(n)](
                param, grad, momentum_buffer if momentum_buffer.numel() else param,
                frozen_bits if frozen_bits.numel() else param, n, lr, momentum, dampening,
                weight_decay, HAS_BUF=bool(momentum_buffer.numel()), NESTEROV=bool(nesterov),
                FIRST_STEP=bool(first_step), HAS_BITS=bool(frozen_bits.numel()),
                BLOCK=K.ELEMENTWISE_BLOCK)
