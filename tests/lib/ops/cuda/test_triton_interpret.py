"""The Triton kernels, launched directly on CPU tensors under
TRITON_INTERPRET=1 (small fp32 shapes: the interpreter is slow and computes
fp32 dots in full precision), against the float64 oracle.  On a GPU machine
(SUBIND_TEST_GPU=1) the same tests run the compiled kernels on CUDA tensors."""
import os

import pytest
import torch

from oracle import assert_matches_oracle, composite_linear, effective_weight, leaf, run_with_grads

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.interpret

ON_GPU = os.environ.get("SUBIND_TEST_GPU") == "1"
DEVICE = "cuda" if ON_GPU else "cpu"


@pytest.fixture(scope="module")
def launchers():
    from subind_fast.ops.cuda.triton_launch import TritonKernels

    return {"prepass": TritonKernels("prepass"), "prologue": TritonKernels("prologue")}


def _problem(m, k, n, seed=0, transposed=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen, dtype=torch.float64)
    w = torch.randn(n, k, generator=gen, dtype=torch.float64) / k ** 0.5
    s = torch.randn(n, k, generator=gen, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    return x, w, s, b


def _on_device(t, dtype=torch.float32, transposed=False):
    t = t.to(DEVICE, dtype)
    return t.t().contiguous().t() if transposed else t


def _beta(value: float) -> torch.Tensor:
    """β as the launchers take it: a one-element tensor on the device."""
    return torch.tensor(value, device=DEVICE)


@pytest.mark.parametrize("variant", ["prepass", "prologue"])
@pytest.mark.parametrize("mode", ["soft", "hard", "none"])
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 5, 3), (17, 33, 20), (33, 18, 47)])
def test_forward_matches_oracle(launchers, variant, mode, m, k, n):
    x, w, s, b = _problem(m, k, n)
    want = composite_linear(x, w, s, 3.0, b, mode)
    got = launchers[variant].linear_forward(_on_device(x), _on_device(w), _on_device(s),
                                           _on_device(b), _beta(3.0), mode)
    assert_matches_oracle(got.cpu(), want, None, torch.float32, f"{variant} forward")


@pytest.mark.parametrize("mode", ["soft", "hard", "none"])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("m,k,n", [(5, 7, 3), (20, 17, 33), (2, 40, 18)])
def test_backward_epilogue_matches_oracle(launchers, mode, transposed, m, k, n):
    x, w, s, b = _problem(m, k, n, seed=1)
    want, want_grads = run_with_grads(lambda *t: composite_linear(t[0], t[1], t[2], 2.0, t[3], mode),
                                      [leaf(x), leaf(w), leaf(s), leaf(b)])
    gen = torch.Generator().manual_seed(0)
    upstream = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    got = launchers["prepass"].linear_backward(
        _on_device(upstream), _on_device(x), _on_device(w, transposed=transposed),
        _on_device(s, transposed=transposed), _beta(2.0), mode, [True, True, True, True])
    for name, g, o in zip(("d_input", "d_weight", "d_logits", "d_bias"), got, want_grads):
        if o is None:
            assert g.numel() == 0, name
        else:
            assert_matches_oracle(g.cpu(), o, None, torch.float32, name)


@pytest.mark.parametrize("variant", ["prepass", "prologue"])
@pytest.mark.parametrize("transposed", [False, True])
def test_the_fused_l0_penalty_matches_oracle(launchers, variant, transposed):
    """linear_forward_l0's penalty Σσ(βs) from the mask pre-pass, and the
    epilogue's ∂s with the penalty's gradient c·β·σ(1−σ) added."""
    x, w, s, b = _problem(9, 21, 34, seed=4)
    c = 0.6
    want, want_grads = run_with_grads(
        lambda *t: composite_linear(t[0], t[1], t[2], 2.0, t[3], "soft"),
        [leaf(x), leaf(w), leaf(s), leaf(b)])
    s64 = leaf(s)
    penalty_want = c * torch.sigmoid(2.0 * s64).sum()
    (penalty_grad,) = torch.autograd.grad(penalty_want, [s64])
    backend = launchers[variant]
    y, penalty = backend.linear_forward_l0(_on_device(x), _on_device(w, transposed=transposed),
                                           _on_device(s, transposed=transposed), _on_device(b),
                                           _beta(2.0), "soft")
    assert_matches_oracle(y.cpu(), want, None, torch.float32, "y")
    assert abs(c * penalty.item() - penalty_want.item()) <= 1e-5 * penalty_want.item()
    upstream = torch.randn(want.shape, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    _, _, gs, _ = backend.linear_backward(
        _on_device(upstream), _on_device(x), _on_device(w, transposed=transposed),
        _on_device(s, transposed=transposed), _beta(2.0), "soft", [True, True, True, True],
        grad_l0=torch.tensor(c, device=DEVICE))
    assert_matches_oracle(gs.cpu(), want_grads[2] + penalty_grad, None, torch.float32,
                          "d_logits with the penalty")


def test_batched_input_and_partial_needs(launchers):
    x, w, s, b = _problem(6, 9, 5)
    x3 = x.view(2, 3, 9)
    got = launchers["prepass"].linear_forward(_on_device(x3), _on_device(w), _on_device(s), None,
                                             _beta(1.5), "soft")
    assert got.shape == (2, 3, 5)
    assert_matches_oracle(got.cpu(), composite_linear(x3, w, s, 1.5), None, torch.float32, "3-D")
    upstream = torch.ones(2, 3, 5, dtype=torch.float32, device=DEVICE)
    gx, gw, gs, gb = launchers["prepass"].linear_backward(
        upstream, _on_device(x3), _on_device(w), _on_device(s), _beta(1.5), "soft",
        [True, False, False, False])
    assert gw.numel() == 0 and gs.numel() == 0 and gb.numel() == 0 and gx.shape == x3.shape


@pytest.mark.parametrize("mode", ["soft", "hard", "none"])
def test_elementwise_kernels(launchers, mode):
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(37, 29, generator=gen, dtype=torch.float64)
    s = torch.randn(37, 29, generator=gen, dtype=torch.float64) * 3
    backend = launchers["prepass"]
    assert_matches_oracle(backend.mask_weight(_on_device(w), _on_device(s), _beta(4.0), mode).cpu(),
                          effective_weight(w, s, 4.0, mode), None, torch.float32, "w_eff")
    want, (gw_want, gs_want) = run_with_grads(lambda a, c: effective_weight(a, c, 4.0, mode),
                                              [leaf(w), leaf(s)])
    upstream = torch.randn(want.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weff, gw, gs = backend.mask_weight_backward(_on_device(upstream), _on_device(w), _on_device(s),
                                                _beta(4.0), mode, True, True, True)
    assert_matches_oracle(weff.cpu(), want, None, torch.float32, "w_eff (bwd)")
    assert_matches_oracle(gw.cpu(), gw_want, None, torch.float32, "d_weight")
    if mode == "soft":
        assert_matches_oracle(gs.cpu(), gs_want, None, torch.float32, "d_logits")
    else:
        assert gs.numel() == 0


def test_l0_kernels_and_saturation(launchers):
    s = torch.cat([torch.randn(3000, dtype=torch.float64) * 0.1,
                   torch.tensor([-1e4, 1e4, 0.0], dtype=torch.float64)])
    backend = launchers["prepass"]
    want, (g_want,) = run_with_grads(lambda t: torch.sigmoid(50.0 * t).sum(), [leaf(s)])
    got = backend.sigmoid_sum(_on_device(s), _beta(50.0))
    assert abs(got.item() - want.item()) <= 1e-5 * want.item()
    grad = backend.sigmoid_sum_backward(torch.ones((), device=DEVICE), _on_device(s), _beta(50.0))
    upstream = torch.randn((), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_matches_oracle(grad.cpu() * upstream.float(), g_want, None, torch.float32, "d_logits")
    assert torch.isfinite(grad).all() and grad[-3].item() == 0.0 and grad[-2].item() == 0.0


def test_float64_is_rejected_with_a_clear_error(launchers):
    x, w, s, b = _problem(2, 3, 4)
    with pytest.raises(TypeError, match="fp32/bf16/fp16, got torch.float64"):
        launchers["prepass"].linear_forward(x.to(DEVICE), w.to(DEVICE), s.to(DEVICE), None,
                                           _beta(1.0), "soft")
