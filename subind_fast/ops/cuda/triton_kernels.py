"""Triton kernels for masked linear layers on CUDA (also run by the tests on
the CPU under TRITON_INTERPRET=1).

Why these kernels.  A masked linear needs three GEMMs per training step, like
a plain one; the mask adds element-wise work on the N×K weight.  Eager PyTorch
materialises σ(βs) and W_eff and keeps both for backward (8 bytes/weight).
Here:

* forward:  W_eff = θ ⊙ m(s) is formed once by ``mask_weight_kernel`` (a
  bandwidth-bound pre-pass), then ``masked_matmul_kernel`` computes
  y = x·W_effᵀ + b with the bias in its epilogue.  The same GEMM kernel can
  instead apply the mask while loading its B tiles (``MASK_B_PROLOGUE``),
  recomputing σ once per M-tile — N·K exponentials per M-tile instead of one
  N·K pass in all, which at large M costs more special-function throughput
  than the pre-pass costs bandwidth; so the pre-pass is the default and the
  prologue stays selectable (SUBIND_TRITON_FWD=prologue) for measurement.
* backward: ``masked_matmul_kernel`` computes the N×K tile of ∂W_eff = Gᵀ·x
  in registers and its epilogue (``MASK_GRAD_EPILOGUE``) turns it directly
  into ∂s = ∂W_eff ⊙ θ ⊙ β·m(1−m), ∂θ = ∂W_eff ⊙ m and the recomputed
  W_eff, so ∂W_eff never reaches memory; then ∂x = G·W_eff.

β is passed as a pointer to a one-element tensor on the device.

Pointer arithmetic: every operand is addressed through explicit strides, so
transposed views (Gᵀ, W_effᵀ, GPT-2's transposed weights) cost nothing.
Precision: inputs in fp32/bf16/fp16, fp32 accumulation, logits fp32; fp32
dots use IEEE fp32 unless PyTorch's own fp32 matmul precision allows TF32
(torch.get_float32_matmul_precision() != "highest"), so we match what
torch.matmul would do on the same device.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..modes import mode

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
# the deterministic modes' codes, as compile-time constants of the kernels
MODE_SOFT = tl.constexpr(mode("soft").code)
MODE_HARD = tl.constexpr(mode("hard").code)
ELEMENTWISE_BLOCK = 1024


@triton.jit
def _mask_and_slope(s, beta, MODE: tl.constexpr):
    """m and dm/dz for z = β·s (same formulas as csrc/include/subind/mask_math.h)."""
    if MODE == MODE_SOFT:
        z = beta * s
        e = tl.exp(-tl.abs(z))  # in (0, 1]: never overflows
        big = 1.0 / (1.0 + e)   # σ(|z|)
        small = e * big         # σ(−|z|)
        m = tl.where(z >= 0, big, small)
        slope = big * small     # σ(z)σ(−z), underflows to 0, never NaN
    elif MODE == MODE_HARD:
        m = tl.where(s > 0, 1.0, 0.0)
        slope = tl.zeros_like(s)
    else:
        m = tl.full(s.shape, 1.0, tl.float32)
        slope = tl.zeros_like(s)
    return m, slope


@triton.jit
def _store_mask_grads(g, theta_ptr, s_ptr, gs_ptr, gtheta_ptr, weff_ptr, offs, keep, beta,
                      grad_l0, MODE: tl.constexpr, WANT_S: tl.constexpr,
                      WANT_THETA: tl.constexpr, WANT_WEFF: tl.constexpr,
                      HAS_GRAD_L0: tl.constexpr):
    """From g = ∂L/∂W_eff (fp32) at ``offs``: ∂s = g⊙θ⊙β·m(1−m), ∂θ = g⊙m, W_eff = θ⊙m;
    HAS_GRAD_L0 (soft mode) adds the L0 penalty's grad_l0·β·m(1−m) to ∂s."""
    theta_raw = tl.load(theta_ptr + offs, mask=keep, other=0.0)
    theta = theta_raw.to(tl.float32)
    s = tl.load(s_ptr + offs, mask=keep, other=0.0).to(tl.float32)
    m, slope = _mask_and_slope(s, beta, MODE)
    # In the GEMM epilogue g is in the MMA layout and each tensor that meets it
    # costs a layout conversion, so ∂s's factor is formed first and meets g once.
    ds_dweff = theta * beta * slope
    if WANT_WEFF:
        tl.store(weff_ptr + offs, (theta * m).to(theta_raw.dtype), mask=keep)
    if WANT_THETA:
        tl.store(gtheta_ptr + offs, (g * m).to(theta_raw.dtype), mask=keep)
    if WANT_S:
        if HAS_GRAD_L0:
            tl.store(gs_ptr + offs, g * ds_dweff + grad_l0 * beta * slope, mask=keep)
        else:
            tl.store(gs_ptr + offs, g * ds_dweff, mask=keep)


@triton.jit
def _store_mask_grad_tile(g, theta_ptr, s_ptr, gs_ptr, gtheta_ptr, weff_ptr, M, N, stride_m,
                          stride_n, start_m, start_n, beta, grad_l0, MODE: tl.constexpr,
                          WANT_S: tl.constexpr, WANT_THETA: tl.constexpr, WANT_WEFF: tl.constexpr,
                          HAS_GRAD_L0: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr):
    """_store_mask_grads for the BLOCK_M×BLOCK_N tile at (start_m, start_n) of
    the M×N θ, s, ∂s, ∂θ and W_eff (all with strides stride_m, stride_n)."""
    rm = start_m + tl.arange(0, BLOCK_M)
    rn = start_n + tl.arange(0, BLOCK_N)
    offs = rm[:, None] * stride_m + rn[None, :] * stride_n
    keep = (rm[:, None] < M) & (rn[None, :] < N)
    _store_mask_grads(g, theta_ptr, s_ptr, gs_ptr, gtheta_ptr, weff_ptr, offs, keep, beta,
                      grad_l0, MODE, WANT_S, WANT_THETA, WANT_WEFF, HAS_GRAD_L0)


@triton.jit
def mask_weight_kernel(theta_ptr, s_ptr, out_ptr, l0_ptr, n, beta_ptr, MODE: tl.constexpr,
                       L0: tl.constexpr, BLOCK: tl.constexpr):
    """out = θ ⊙ m(s) over n contiguous elements; L0 (soft mode): also
    l0 += Σ σ(β·s), the L0 penalty, from the same σ (fp32 atomics)."""
    beta = tl.load(beta_ptr).to(tl.float32)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    theta = tl.load(theta_ptr + offs, mask=keep, other=0.0)
    s = tl.load(s_ptr + offs, mask=keep, other=0.0).to(tl.float32)
    m, _ = _mask_and_slope(s, beta, MODE)
    tl.store(out_ptr + offs, (theta.to(tl.float32) * m).to(theta.dtype), mask=keep)
    if L0:
        tl.atomic_add(l0_ptr, tl.sum(tl.where(keep, m, 0.0), axis=0))


@triton.jit
def mask_backward_kernel(g_ptr, theta_ptr, s_ptr, gs_ptr, gtheta_ptr, weff_ptr, n, beta_ptr,
                         MODE: tl.constexpr, WANT_S: tl.constexpr, WANT_THETA: tl.constexpr,
                         WANT_WEFF: tl.constexpr, BLOCK: tl.constexpr):
    """From g = ∂L/∂W_eff: ∂s = g⊙θ⊙β·m(1−m), ∂θ = g⊙m, W_eff = θ⊙m."""
    beta = tl.load(beta_ptr).to(tl.float32)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    g = tl.load(g_ptr + offs, mask=keep, other=0.0).to(tl.float32)
    _store_mask_grads(g, theta_ptr, s_ptr, gs_ptr, gtheta_ptr, weff_ptr, offs, keep, beta, 0.0,
                      MODE, WANT_S, WANT_THETA, WANT_WEFF, False)


@triton.jit
def sigmoid_sum_kernel(s_ptr, out_ptr, n, beta_ptr, BLOCK: tl.constexpr):
    """out += Σ σ(β·s) over this block (fp32 atomics)."""
    beta = tl.load(beta_ptr).to(tl.float32)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    s = tl.load(s_ptr + offs, mask=keep, other=0.0).to(tl.float32)
    m, _ = _mask_and_slope(s, beta, MODE_SOFT)
    tl.atomic_add(out_ptr, tl.sum(tl.where(keep, m, 0.0), axis=0))


@triton.jit
def sigmoid_slope_kernel(s_ptr, grad_ptr, out_ptr, n, beta_ptr, BLOCK: tl.constexpr):
    """out = grad · β·m(1−m): the gradient of Σσ(β·s)."""
    beta = tl.load(beta_ptr).to(tl.float32)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    s = tl.load(s_ptr + offs, mask=keep, other=0.0).to(tl.float32)
    grad = tl.load(grad_ptr).to(tl.float32)
    _, slope = _mask_and_slope(s, beta, MODE_SOFT)
    tl.store(out_ptr + offs, grad * beta * slope, mask=keep)


#: Autotune candidates (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps) per
#: operand precision and GEMM variant.  Each one compiles for sm_80 and sm_90a
#: without register spills and within the block's shared memory, as
#: benchmarks/gpu_static.py measures and tests/lib/ops/cuda/test_gpu_static.py
#: enforces.  IEEE fp32 dots run on FMA units and need A and B fragments in
#: registers, hence their small tiles; the mask prologue also stages the fp32
#: logits of each B tile, hence its shorter list.
_GEMM_SHAPES = {
    "16-bit": {
        "plain": [(128, 128, 64, 4, 8), (128, 256, 64, 3, 8), (256, 128, 64, 3, 8),
                  (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (64, 64, 64, 4, 4),
                  (128, 128, 32, 4, 4)],
        "mask prologue": [(128, 64, 64, 4, 4), (64, 64, 64, 4, 4), (128, 128, 32, 4, 4)],
    },
    "fp32 ieee": {
        "plain": [(128, 64, 32, 3, 8), (64, 128, 32, 3, 8), (64, 64, 32, 3, 8),
                  (64, 64, 32, 3, 4), (32, 64, 32, 4, 4), (64, 32, 32, 4, 4),
                  (64, 64, 16, 4, 4)],
        "mask prologue": [(64, 64, 32, 3, 8), (64, 64, 16, 4, 4)],
    },
    "fp32 tf32": {
        "plain": [(128, 128, 32, 3, 8), (128, 256, 32, 3, 8), (128, 64, 32, 4, 4),
                  (64, 128, 32, 4, 4), (64, 64, 32, 4, 4), (64, 64, 32, 3, 8)],
        "mask prologue": [(128, 128, 32, 3, 8), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4),
                          (64, 64, 32, 4, 4), (64, 64, 32, 3, 8)],
    },
}
GEMM_OPERANDS = tuple(_GEMM_SHAPES)
GEMM_VARIANTS = ("plain", "mask prologue", "gradient epilogue")
#: The gradient epilogue keeps, per accumulator element, θ, s, the mask and
#: the ∂s factor live beside the accumulator; past 64 accumulator elements per
#: thread that spills on both architectures.
_EPILOGUE_ACCUMULATOR_PER_THREAD = 64


def gemm_operands(dtype: torch.dtype, ieee: bool) -> str:
    """The GEMM_OPERANDS class of a launch: 16-bit inputs, or fp32 with IEEE or TF32 dots."""
    if dtype in (torch.bfloat16, torch.float16):
        return "16-bit"
    return "fp32 ieee" if ieee else "fp32 tf32"


def _shape_key(config) -> tuple:
    kw = config.kwargs
    return (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], config.num_stages, config.num_warps)


def _config(shape) -> "triton.Config":
    bm, bn, bk, stages, warps = shape
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                         num_stages=stages, num_warps=warps)


def gemm_configs(operands: str, variant: str) -> list:
    """The configs autotune may pick for a masked_matmul_kernel launch."""
    if operands not in _GEMM_SHAPES:
        raise ValueError(f"operands must be one of {GEMM_OPERANDS}, got {operands!r}")
    if variant not in GEMM_VARIANTS:
        raise ValueError(f"variant must be one of {GEMM_VARIANTS}, got {variant!r}")
    shapes = _GEMM_SHAPES[operands]
    if variant == "gradient epilogue":
        chosen = [(bm, bn, bk, stages, warps) for bm, bn, bk, stages, warps in shapes["plain"]
                  if bm * bn // (32 * warps) <= _EPILOGUE_ACCUMULATOR_PER_THREAD]
    else:
        chosen = shapes[variant]
    return [_config(shape) for shape in chosen]


def _all_gemm_configs():
    if INTERPRETING:  # the interpreter runs every config: keep one, small
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4},
                              num_warps=4, num_stages=1)]
    unique = {}
    for operands in GEMM_OPERANDS:
        for variant in GEMM_VARIANTS:
            for config in gemm_configs(operands, variant):
                unique.setdefault(_shape_key(config), config)
    return list(unique.values())


def _launch_variant(kwargs) -> str:
    if kwargs["MASK_GRAD_EPILOGUE"]:
        return "gradient epilogue"
    return "mask prologue" if kwargs["MASK_B_PROLOGUE"] else "plain"


def _prune_gemm_configs(configs, named_args, **kwargs):
    """Autotune only over the configs listed for this launch's operands and variant."""
    if INTERPRETING:
        return configs
    allowed = {_shape_key(c) for c in gemm_configs(
        gemm_operands(named_args["a_ptr"].dtype, kwargs["IEEE"]), _launch_variant(kwargs))}
    return [c for c in configs if _shape_key(c) in allowed]


@triton.autotune(configs=_all_gemm_configs(),
                 key=["M", "N", "K", "MASK_B_PROLOGUE", "MASK_GRAD_EPILOGUE", "IEEE"],
                 prune_configs_by={"early_config_prune": _prune_gemm_configs})
@triton.jit
def masked_matmul_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, theta_ptr, s_ptr, gs_ptr, gtheta_ptr, weff_ptr, grad_l0_ptr,
    M, N, K, beta_ptr,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    stride_tm, stride_tn,
    MODE: tl.constexpr, HAS_BIAS: tl.constexpr, MASK_B_PROLOGUE: tl.constexpr,
    MASK_GRAD_EPILOGUE: tl.constexpr, WANT_S: tl.constexpr, WANT_THETA: tl.constexpr,
    WANT_WEFF: tl.constexpr, HAS_GRAD_L0: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """acc = A[M,K]·B[K,N] in fp32, then one of three epilogues:

    * plain:               C = acc (+ bias[n])
    * MASK_B_PROLOGUE:     B is θ (addressed as K×N) and each B tile is
                           multiplied by m(s) on load (s shares θ's strides)
    * MASK_GRAD_EPILOGUE:  acc is ∂W_eff; θ and s (strides stride_tm/tn over the
                           M×N output) give ∂s, ∂θ and W_eff; C is not written;
                           HAS_GRAD_L0 adds the L0 penalty's gradient
                           grad_l0·β·m(1−m) (a scalar on the device) to ∂s
    """
    # β is read on the device (a one-element tensor), so annealing it never
    # recompiles or syncs; the plain GEMMs get any valid fp pointer and ignore it.
    beta = tl.load(beta_ptr).to(tl.float32)
    pid = tl.program_id(0)
    # Grouped ordering: GROUP_M row-tiles share their B tiles in L2.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * num_pid_n)
    first_m = group * GROUP_M
    group_size = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + ((pid % (GROUP_M * num_pid_n)) % group_size)
    pid_n = (pid % (GROUP_M * num_pid_n)) // group_size

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    if MASK_B_PROLOGUE:
        s_ptrs = s_ptr + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a_keep = (rm[:, None] < M) & (rk[None, :] + k0 < K)
        b_keep = (rk[:, None] + k0 < K) & (rn[None, :] < N)
        a = tl.load(a_ptrs, mask=a_keep, other=0.0)
        b = tl.load(b_ptrs, mask=b_keep, other=0.0)
        if MASK_B_PROLOGUE:
            s_tile = tl.load(s_ptrs, mask=b_keep, other=0.0).to(tl.float32)
            m_tile, _ = _mask_and_slope(s_tile, beta, MODE)
            b = (b.to(tl.float32) * m_tile).to(a.dtype)
            s_ptrs += BLOCK_K * stride_bk
        if IEEE:
            acc += tl.dot(a, b, input_precision="ieee")
        else:
            acc += tl.dot(a, b)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    out_keep = (rm[:, None] < M) & (rn[None, :] < N)
    if MASK_GRAD_EPILOGUE:
        # Half a tile at a time: the epilogue's per-element temporaries (θ, s,
        # the mask, the ∂s factor) for the whole tile beside the accumulator
        # spilled registers in every 16-bit config but 64×64×64.
        grad_l0 = tl.load(grad_l0_ptr).to(tl.float32) if HAS_GRAD_L0 else 0.0
        halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
        g_left, g_right = tl.split(halves)
        _store_mask_grad_tile(g_left, theta_ptr, s_ptr, gs_ptr, gtheta_ptr, weff_ptr, M, N,
                              stride_tm, stride_tn, pid_m * BLOCK_M, pid_n * BLOCK_N, beta,
                              grad_l0, MODE, WANT_S, WANT_THETA, WANT_WEFF, HAS_GRAD_L0,
                              BLOCK_M, BLOCK_N // 2)
        _store_mask_grad_tile(g_right, theta_ptr, s_ptr, gs_ptr, gtheta_ptr, weff_ptr, M, N,
                              stride_tm, stride_tn, pid_m * BLOCK_M, pid_n * BLOCK_N + BLOCK_N // 2,
                              beta, grad_l0, MODE, WANT_S, WANT_THETA, WANT_WEFF, HAS_GRAD_L0,
                              BLOCK_M, BLOCK_N // 2)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=out_keep)


@triton.jit
def _frozen_bits(bits_ptr, offs, keep, HAS_BITS: tl.constexpr):
    """1 where element offs is frozen (bit offs%8 of byte offs//8, LSB first)."""
    if HAS_BITS:
        byte = tl.load(bits_ptr + offs // 8, mask=keep, other=0).to(tl.int32)
        return ((byte >> (offs % 8)) & 1) != 0
    return offs < 0


@triton.jit
def adamw_kernel(p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, bits_ptr, n, lr, beta1, beta2, eps,
                 weight_decay, step_size, inv_sqrt_bias2, AMSGRAD: tl.constexpr,
                 HAS_BITS: tl.constexpr, BLOCK: tl.constexpr):
    """One fused AdamW step (csrc/include/subind/optim_math.h); frozen
    elements of parameter and state are stored back unchanged."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    frozen = _frozen_bits(bits_ptr, offs, keep, HAS_BITS)
    p = tl.load(p_ptr + offs, mask=keep)
    g = tl.load(g_ptr + offs, mask=keep)
    m = tl.load(m_ptr + offs, mask=keep)
    v = tl.load(v_ptr + offs, mask=keep)
    m_new = beta1 * m + (1 - beta1) * g
    v_new = beta2 * v + (1 - beta2) * g * g
    v_used = v_new
    if AMSGRAD:
        vmax = tl.load(vmax_ptr + offs, mask=keep)
        v_used = tl.maximum(vmax, v_new)
        tl.store(vmax_ptr + offs, tl.where(frozen, vmax, v_used), mask=keep)
    p_new = p * (1 - lr * weight_decay) - step_size * m_new / (tl.sqrt(v_used) * inv_sqrt_bias2 + eps)
    tl.store(p_ptr + offs, tl.where(frozen, p, p_new), mask=keep)
    tl.store(m_ptr + offs, tl.where(frozen, m, m_new), mask=keep)
    tl.store(v_ptr + offs, tl.where(frozen, v, v_new), mask=keep)


@triton.jit
def sgd_kernel(p_ptr, g_ptr, buf_ptr, bits_ptr, n, lr, momentum, dampening, weight_decay,
               HAS_BUF: tl.constexpr, NESTEROV: tl.constexpr, FIRST_STEP: tl.constexpr,
               HAS_BITS: tl.constexpr, BLOCK: tl.constexpr):
    """One fused SGD step (momentum, dampening, nesterov, weight decay)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    keep = offs < n
    frozen = _frozen_bits(bits_ptr, offs, keep, HAS_BITS)
    p = tl.load(p_ptr + offs, mask=keep)
    g = tl.load(g_ptr + offs, mask=keep) + weight_decay * p
    if HAS_BUF:
        b = tl.load(buf_ptr + offs, mask=keep)
        if FIRST_STEP:
            b_new = g
        else:
            b_new = momentum * b + (1 - dampening) * g
        tl.store(buf_ptr + offs, tl.where(frozen, b, b_new), mask=keep)
        if NESTEROV:
            g = g + momentum * b_new
        else:
            g = b_new
    tl.store(p_ptr + offs, tl.where(frozen, p, p - lr * g), mask=keep)
