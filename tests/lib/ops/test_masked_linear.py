"""masked_linear on the CPU backends vs the float64 oracle: forward and every
gradient, all modes and dtypes, awkward shapes and layouts."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import subind_fast as sf
from oracle import assert_matches_oracle, composite_linear, leaf, run_with_grads

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
MODES = ["soft", "hard", "none"]


def make_problem(x_shape, n_out, seed=0, logit_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    k = x_shape[-1]
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64)
    w = torch.randn(n_out, k, generator=gen, dtype=torch.float64) / math.sqrt(k)
    s = torch.randn(n_out, k, generator=gen, dtype=torch.float64) * logit_scale
    b = torch.randn(n_out, generator=gen, dtype=torch.float64)
    return x, w, s, b


def check_linear(x, w, s, b, beta, mode, dtype, weight_grad=True, layout=lambda t: t,
                 x_layout=lambda t: t):
    """Compare ours (in `dtype`, logits fp32 or fp64) with the fp64 oracle and
    with PyTorch's composite in the same dtype."""
    logit_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    has_bias = b is not None

    def composite(x_, w_, s_, b_):
        return composite_linear(x_, w_, s_, beta, b_, mode)

    def ours_fn(x_, w_, s_, b_):
        return sf.masked_linear(x_layout(x_), layout(w_), layout(s_), beta, b_, mode)

    def inputs(dt, ldt):
        return [leaf(x, dt), leaf(w, dt, weight_grad), leaf(s, ldt),
                leaf(b, dt) if has_bias else None]

    want_oracle, oracle_grads = run_with_grads(composite, inputs(torch.float64, torch.float64))
    want_torch, torch_grads = run_with_grads(composite, inputs(dtype, logit_dtype))
    got, got_grads = run_with_grads(ours_fn, inputs(dtype, logit_dtype))
    assert got.dtype == dtype
    assert_matches_oracle(got, want_oracle, want_torch, dtype, "output")
    for name, g, o, t in zip(("d_input", "d_weight", "d_logits", "d_bias"), got_grads,
                             oracle_grads, torch_grads):
        if o is None:
            assert g is None, f"{name}: expected no gradient"
            continue
        assert_matches_oracle(g, o, t, dtype, name)


SHAPES = [((1, 1), 1), ((7, 7), 7), ((5, 127), 3), ((3, 4097), 5), ((2, 3, 33), 17),
          ((2, 1, 4, 9), 127)]


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("x_shape,n_out", SHAPES)
def test_fp32_and_fp64_shapes(kernels, mode, x_shape, n_out):
    for dtype in (torch.float32, torch.float64):
        x, w, s, b = make_problem(x_shape, n_out)
        check_linear(x, w, s, b, 3.0, mode, dtype)


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
def test_dtypes(kernels, dtype, mode):
    x, w, s, b = make_problem((6, 40), 24, seed=1)
    check_linear(x, w, s, b, 2.5, mode, dtype)


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
def test_without_bias_and_frozen_weight(kernels):
    x, w, s, _ = make_problem((9, 31), 13)
    check_linear(x, w, s, None, 1.0, "soft", torch.float32, weight_grad=False)


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
def test_non_contiguous_operands(kernels):
    x, w, s, b = make_problem((8, 64), 30)
    # A transposed weight/logits pair (GPT-2 Conv1D layout), a strided slice,
    # and a non-contiguous input.
    check_linear(x, w, s, b, 2.0, "soft", torch.float32, layout=lambda t: t.t().contiguous().t())
    check_linear(x, w, s, b, 2.0, "soft", torch.float32,
                 layout=lambda t: torch.stack([t, t], -1)[..., 0])
    check_linear(x, w, s, b, 2.0, "soft", torch.float32,
                 x_layout=lambda t: t.t().contiguous().t())


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
def test_weight_and_logits_with_different_layouts(kernels):
    x, w, s, b = make_problem((4, 16), 12)
    xs, ws, ss, bs = [leaf(t, torch.float32) for t in (x, w, s, b)]
    s_t = ss.detach().t().contiguous().t().requires_grad_()
    got = sf.masked_linear(xs, ws, s_t, 1.5, bs)
    want = composite_linear(x, w, s, 1.5, b)
    assert_matches_oracle(got, want, None, torch.float32, "output")
    got.sum().backward()
    assert s_t.grad.shape == s_t.shape


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
@pytest.mark.parametrize("beta,logit_scale", [(1e4, 1.0), (1.0, 1e4), (1e4, 1e4), (100.0, 1e-3)])
def test_extreme_beta_and_logits_stay_finite(kernels, beta, logit_scale):
    x, w, s, b = make_problem((5, 50), 20, logit_scale=logit_scale)
    s[0, :5] = 0.0  # exactly at the threshold
    check_linear(x, w, s, b, beta, "soft", torch.float32)


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 40), k=st.integers(1, 70), n=st.integers(1, 40),
       beta=st.floats(0.05, 200.0), mode=st.sampled_from(MODES), seed=st.integers(0, 10_000))
def test_random_shapes(kernels, m, k, n, beta, mode, seed):
    x, w, s, b = make_problem((m, k), n, seed=seed)
    check_linear(x, w, s, b, beta, mode, torch.float32)


def test_compiled_cpu_kernels_serve_cpu_by_default():
    info = sf.backend_info()
    assert set(info["devices"]["cpu"].values()) == {"cpu (C++)"}
    assert info["kernels"] == "fused"


# The CPU kernel processes the weight in blocks of stored rows that fit 256 KiB
# (csrc/cpu/masked_linear.cpp) when the batch is no taller than a block: with
# rows of 4096 fp32 elements that is 16 rows, so these shapes run several
# blocks and a partial last one (bf16: 32 rows; fp64: 16).
BLOCKED = [((3, 4096), 50), ((16, 4096), 17), ((2, 4, 4096), 40)]


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}threads")
def threads(request):
    """Blocks are shared out whole over the intra-op threads (one share per
    thread, uneven when 3 threads take 4 blocks); sums over blocks go
    through one partial per share."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weight_grad", [False, True])
@pytest.mark.parametrize("x_shape,n_out", BLOCKED)
def test_cpu_blocked_schedule(dtype, mode, weight_grad, x_shape, n_out, threads):
    """The blocked forward/backward: dW_eff transformed in place per block, ∂x
    accumulated across blocks, a partial last block."""
    x, w, s, b = make_problem(x_shape, n_out, seed=5)
    check_linear(x, w, s, b, 2.0, mode, dtype, weight_grad=weight_grad)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("weight_grad", [False, True])
@pytest.mark.parametrize("m", [3, 40])
def test_cpu_blocked_schedule_of_a_weight_stored_in_by_out(mode, weight_grad, m, threads):
    """GPT-2's Conv1D hands over Wᵀ-stored views: blocks of stored rows are
    input features, y accumulates across blocks and ∂x's columns do not."""
    x, w, s, b = make_problem((m, 60), 4096, seed=7)
    check_linear(x, w, s, b, 2.0, mode, torch.float32, weight_grad=weight_grad,
                 layout=lambda t: t.t().contiguous().t())


@pytest.mark.parametrize("mode", MODES)
def test_cpu_blocked_schedule_of_sliced_weights(mode, threads):
    """A row-sliced weight (row stride larger than the row) is walked row by row, uncopied."""
    x, w, s, b = make_problem((4, 4096), 33, seed=9)
    check_linear(x, w, s, b, 2.0, mode, torch.float32,
                 layout=lambda t: torch.cat([t, t[:, :100]], 1)[:, :4096])