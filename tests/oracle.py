"""The float64 oracle: the masked layers written as plain PyTorch autograd
composites (sigmoid → mul → F.linear / convolution), independent of every
line of our backward code."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

# Per dtype, relative to the output's scale (the largest |oracle| value).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}


def mask_of(logits, beta, mode):
    if mode == "soft":
        return torch.sigmoid(beta * logits)
    if mode == "hard":
        return (logits > 0).to(logits.dtype)
    return torch.ones_like(logits)


def effective_weight(weight, logits, beta, mode):
    return (weight.to(logits.dtype) * mask_of(logits, beta, mode)).to(weight.dtype)


def composite_linear(x, weight, logits, beta, bias=None, mode="soft"):
    return F.linear(x, effective_weight(weight, logits, beta, mode), bias)


def composite_conv(x, weight, logits, beta, bias=None, stride=1, padding=0, dilation=1,
                   groups=1, mode="soft"):
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[weight.dim()]
    return conv(x, effective_weight(weight, logits, beta, mode), bias, stride, padding, dilation,
                groups)


def run_with_grads(fn, tensors, upstream_seed=0, **kwargs):
    """fn(*tensors) and the gradients of <output, fixed random upstream> with
    respect to every tensor that requires grad (None where it gets none)."""
    out = fn(*tensors, **kwargs)
    gen = torch.Generator().manual_seed(upstream_seed)
    upstream = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
    wanted = [t for t in tensors if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, wanted, upstream, allow_unused=True)
    it = iter(grads)
    return out.detach(), [next(it) if (t is not None and t.requires_grad) else None for t in tensors]


def leaf(t, dtype=None, requires_grad=True):
    if t is None:
        return None
    t = t.detach().to(dtype or t.dtype).clone()
    return t.requires_grad_(requires_grad)


def assert_matches_oracle(ours, oracle, same_dtype=None, dtype=torch.float32, what=""):
    """|ours − oracle| ≤ tol·scale, or ≤ 2× the error PyTorch makes computing
    the same composite in the same dtype (flash-attention's rule)."""
    assert ours is not None and oracle is not None, f"{what}: missing gradient"
    assert ours.shape == oracle.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(oracle.shape)}"
    assert torch.isfinite(ours).all(), f"{what}: non-finite values"
    err = (ours.double() - oracle.double()).abs().max().item() if ours.numel() else 0.0
    # Scale floor: an oracle that is all but zero (e.g. ∂s where β·s saturates,
    # true value ~1e-14) is matched by an fp32 zero; fp32 cannot resolve it.
    scale = max(oracle.double().abs().max().item() if oracle.numel() else 0.0, 1e-6)
    if err <= TOLERANCE[dtype] * scale:
        return
    if same_dtype is not None:
        torch_err = (same_dtype.double() - oracle.double()).abs().max().item()
        if err <= 2 * torch_err:
            return
        raise AssertionError(f"{what}: error {err:.3g} > 2 x torch's same-dtype error "
                             f"{torch_err:.3g} and > {TOLERANCE[dtype]:g} x scale {scale:.3g}")
    raise AssertionError(f"{what}: error {err:.3g} > {TOLERANCE[dtype]:g} x scale {scale:.3g}")


def extra_saved_bytes(fn, owned):
    """(bytes autograd saves beyond the storage of ``owned``, fn's output):
    the library's probe (subind_fast/testing/memory.py), as the tests read it."""
    from subind_fast.testing.memory import saved_bytes

    saved = saved_bytes(fn, owned)
    return saved.total, saved.output


def composite_sampled_weight(weight, logits, beta, mode, key):
    """W_eff of a sampled mode written with plain autograd (float64): hard-concrete
    stretched by ε = 0.1 (γ = −0.1, ζ = 1.1) and clamped, Gumbel thresholded with
    a straight-through gradient; the noise is the library's keyed noise (the
    one thing both sides must share)."""
    from subind_fast.ops import noise as noise_lib

    eps = 0.1
    noise = noise_lib.logistic(key, noise_lib.element_offsets(logits), logits.dtype)
    y = torch.sigmoid(beta * (logits + noise))
    if mode == "concrete":
        m = (y * (1 + 2 * eps) - eps).clamp(0, 1)
    else:
        m = (y > 0.5).to(y.dtype) + y - y.detach()
    return weight.to(logits.dtype) * m


def optional_import(module: str, *names: str):
    """``names`` from an optional package (transformers, timm: the driver's
    extras); the test skips where it is not installed — the kernel library's
    core install (torch, numpy, safetensors, triton) runs without them."""
    found = pytest.importorskip(module)
    values = tuple(getattr(found, name) for name in names)
    return values[0] if len(values) == 1 else values


def _inductor_cpu_compiles() -> bool:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or an Inductor without the helper
        return False
    return True


#: torch.compile's default backend (Inductor) compiles generated C++ for CPU
#: tensors, so it needs a C++ compiler; the library's wheel does not, and on a
#: machine without one these tests skip (torch's requirement, not ours).
needs_inductor_cpu = pytest.mark.skipif(
    not _inductor_cpu_compiles(),
    reason="torch.compile (Inductor) needs a C++ compiler for CPU tensors, and none is installed")
