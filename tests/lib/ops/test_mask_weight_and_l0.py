"""The element-wise ops on their own: mask_weight (W_eff) and the L0 term."""
import pytest
import torch

import subind_fast as sf
from oracle import assert_matches_oracle, effective_weight, leaf, run_with_grads


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
@pytest.mark.parametrize("mode", ["soft", "hard", "none"])
@pytest.mark.parametrize("shape", [(1,), (7,), (127, 3), (4097,), (2, 3, 5, 7)])
def test_mask_weight_and_its_gradients(kernels, mode, shape):
    w = torch.randn(shape, dtype=torch.float64)
    s = torch.randn(shape, dtype=torch.float64)
    want, want_g = run_with_grads(lambda w_, s_: effective_weight(w_, s_, 4.0, mode),
                                  [leaf(w), leaf(s)])
    got, got_g = run_with_grads(lambda w_, s_: sf.mask_weight(w_, s_, 4.0, mode),
                                [leaf(w, torch.float32), leaf(s, torch.float32)])
    assert_matches_oracle(got, want, None, torch.float32, "w_eff")
    assert_matches_oracle(got_g[0], want_g[0], None, torch.float32, "d_weight")
    if mode == "soft":
        assert_matches_oracle(got_g[1], want_g[1], None, torch.float32, "d_logits")
    else:
        assert got_g[1] is None


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
@pytest.mark.parametrize("beta", [1.0, 100.0, 1e4])
@pytest.mark.parametrize("n", [1, 7, 513, 100_003])
def test_l0_value_and_gradient(kernels, beta, n):
    s = torch.randn(n, dtype=torch.float64) * 0.05
    want, (want_g,) = run_with_grads(lambda s_: torch.sigmoid(beta * s_).sum(), [leaf(s)])
    got, (got_g,) = run_with_grads(lambda s_: sf.l0(s_, beta), [leaf(s, torch.float32)])
    assert got.dtype == torch.float32 and got.dim() == 0
    assert abs(got.item() - want.item()) <= 1e-6 * max(1.0, want.item())
    # The eager kernels are PyTorch's autograd of σ: within 2x its own fp32 error.
    torch_g = run_with_grads(lambda s_: torch.sigmoid(beta * s_).sum(),
                             [leaf(s, torch.float32)])[1][0] if kernels == "eager" else None
    assert_matches_oracle(got_g, want_g, torch_g, torch.float32, "d_logits")


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
def test_mask_saturates_without_nan(kernels):
    s = torch.tensor([-1e4, -100.0, -1e-3, 0.0, 1e-3, 100.0, 1e4], requires_grad=True)
    w = torch.ones(7)
    weff = sf.mask_weight(w, s, 1e4)
    assert torch.isfinite(weff).all()
    assert weff[0] == 0 and weff[-1] == 1 and weff[3] == 0.5
    weff.sum().backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad[0] == 0 and s.grad[-1] == 0  # m(1-m) underflows to exactly 0
    assert s.grad[3] == pytest.approx(1e4 * 0.25)


def test_hard_mask_is_strictly_positive_logits():
    s = torch.tensor([-1.0, 0.0, 1e-30, 2.0])
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert sf.mask_weight(w, s, 1.0, "hard").tolist() == [0.0, 0.0, 3.0, 4.0]
