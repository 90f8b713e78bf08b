"""masked_conv1d/2d/3d on the CPU backends vs the float64 oracle."""
import pytest
import torch

import subind_fast as sf
from oracle import assert_matches_oracle, composite_conv, leaf, run_with_grads

CASES = [
    # (nd, x_shape, weight_shape, geometry)
    (1, (2, 4, 19), (6, 4, 3), dict(stride=1, padding=1, dilation=1, groups=1)),
    (1, (3, 19), (5, 3, 5), dict(stride=2, padding=0, dilation=2, groups=1)),  # unbatched
    (2, (2, 3, 11, 9), (8, 3, 3, 3), dict(stride=1, padding=1, dilation=1, groups=1)),
    (2, (1, 4, 13, 7), (6, 2, 3, 1), dict(stride=(2, 1), padding=(1, 0), dilation=1, groups=2)),
    (2, (2, 6, 9, 9), (6, 1, 3, 3), dict(stride=1, padding="same", dilation=2, groups=6)),
    (2, (1, 3, 7, 7), (7, 3, 1, 1), dict(stride=1, padding="valid", dilation=1, groups=1)),
    (3, (1, 2, 5, 6, 4), (3, 2, 3, 3, 3), dict(stride=1, padding=1, dilation=1, groups=1)),
]


def _problem(x_shape, w_shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64)
    w = torch.randn(w_shape, generator=gen, dtype=torch.float64) * 0.3
    s = torch.randn(w_shape, generator=gen, dtype=torch.float64)
    b = torch.randn(w_shape[0], generator=gen, dtype=torch.float64)
    return x, w, s, b


def check_conv(x, w, s, b, beta, mode, dtype, geometry, x_layout=lambda t: t):
    logit_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    oracle_geometry = dict(geometry)
    if geometry["padding"] == "same":
        oracle_geometry["padding"] = "same"

    def composite(x_, w_, s_, b_):
        return composite_conv(x_, w_, s_, beta, b_, mode=mode, **oracle_geometry)

    def ours(x_, w_, s_, b_):
        return sf.masked_conv(x_layout(x_), w_, s_, beta, b_, mode=mode, **geometry)

    def inputs(dt, ldt):
        return [leaf(x, dt), leaf(w, dt), leaf(s, ldt), leaf(b, dt)]

    want, want_grads = run_with_grads(composite, inputs(torch.float64, torch.float64))
    same, same_grads = run_with_grads(composite, inputs(dtype, logit_dtype))
    got, got_grads = run_with_grads(ours, inputs(dtype, logit_dtype))
    assert_matches_oracle(got, want, same, dtype, "output")
    for name, g, o, t in zip(("d_input", "d_weight", "d_logits", "d_bias"), got_grads,
                             want_grads, same_grads):
        if o is None:
            assert g is None, name
        else:
            assert_matches_oracle(g, o, t, dtype, name)


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
@pytest.mark.parametrize("mode", ["soft", "hard", "none"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_conv_fp32(kernels, mode, case):
    nd, x_shape, w_shape, geometry = CASES[case]
    x, w, s, b = _problem(x_shape, w_shape)
    check_conv(x, w, s, b, 3.0, mode, torch.float32, geometry)


@pytest.mark.parametrize("kernels", ["fused", "eager"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_conv_dtypes(kernels, dtype):
    nd, x_shape, w_shape, geometry = CASES[2]
    x, w, s, b = _problem(x_shape, w_shape, seed=3)
    check_conv(x, w, s, b, 2.0, "soft", dtype, geometry)


@pytest.mark.parametrize("kernels", ["fused"], indirect=True)
def test_conv_channels_last_input_and_weight(kernels):
    x, w, s, b = _problem((2, 5, 8, 8), (4, 5, 3, 3))
    check_conv(x, w, s, b, 1.0, "soft", torch.float32,
               dict(stride=1, padding=1, dilation=1, groups=1),
               x_layout=lambda t: t.contiguous(memory_format=torch.channels_last))
    w_cl = leaf(w, torch.float32).detach().contiguous(memory_format=torch.channels_last)
    s_cl = leaf(s, torch.float32).detach().contiguous(memory_format=torch.channels_last)
    s_cl.requires_grad_()
    got = sf.masked_conv2d(leaf(x, torch.float32), w_cl, s_cl, 1.0, padding=1)
    want = composite_conv(x, w, s, 1.0, padding=1)
    assert_matches_oracle(got, want, None, torch.float32, "channels_last output")
    got.sum().backward()
    assert s_cl.grad.shape == s_cl.shape


def test_conv_rank_specific_entry_points():
    x, w, s, b = _problem((1, 2, 9), (3, 2, 3))
    assert sf.masked_conv1d(x, w, s, 1.0).shape == (1, 3, 7)
    with pytest.raises(ValueError, match="masked_conv2d: weight must have 4 dims"):
        sf.masked_conv2d(x, w, s, 1.0)
