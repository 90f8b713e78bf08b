"""Bad input gets a clear error naming the argument, shape, dtype or device."""
import math

import pytest
import torch

import subind_fast as sf
from subind_fast.nn import MaskedLinear

W = torch.randn(4, 6)
S = torch.randn(4, 6)
X = torch.randn(3, 6)


@pytest.mark.parametrize("call,error,match", [
    (lambda: sf.masked_linear(X, W, torch.randn(4, 5), 1.0), ValueError,
     r"logits shape \(4, 5\) must equal weight shape \(4, 6\)"),
    (lambda: sf.masked_linear(torch.randn(3, 5), W, S, 1.0), ValueError,
     r"input shape \(3, 5\) does not match weight shape \(4, 6\)"),
    (lambda: sf.masked_linear(X.double(), W, S, 1.0), TypeError,
     "input dtype torch.float64 differs from weight dtype torch.float32"),
    (lambda: sf.masked_linear(X.long(), W, S, 1.0), TypeError, "floating-point input"),
    (lambda: sf.masked_linear(X, W.long(), S, 1.0), TypeError, "weight has dtype torch.int64"),
    (lambda: sf.masked_linear(X, W, S.half(), 1.0), TypeError, "logits has dtype torch.float16"),
    (lambda: sf.masked_linear(X, W, S.to("meta"), 1.0), ValueError, "logits is on meta"),
    (lambda: sf.masked_linear(X, W, S, 0.0), ValueError, "beta must be a positive finite"),
    (lambda: sf.masked_linear(X, W, S, -2.0), ValueError, "beta must be a positive finite"),
    (lambda: sf.masked_linear(X, W, S, math.nan), ValueError, "beta must be a positive finite"),
    (lambda: sf.masked_linear(X, W, S, math.inf), ValueError, "beta must be a positive finite"),
    (lambda: sf.masked_linear(X, W, S, "1"), TypeError, "beta must be a positive finite"),
    (lambda: sf.masked_linear(X, W, S, 1.0, mode="soft-ish"), ValueError, "mode must be one of"),
    (lambda: sf.masked_linear(X, W, S, 1.0, bias=torch.randn(5)), ValueError,
     r"bias shape \(5,\) must be \(4,\)"),
    (lambda: sf.masked_linear(X, W.view(4, 6, 1), S.view(4, 6, 1), 1.0), ValueError,
     "weight must be 2-D"),
    (lambda: sf.masked_conv2d(torch.randn(1, 5, 8, 8), torch.randn(4, 3, 3, 3),
                              torch.randn(4, 3, 3, 3), 1.0), ValueError,
     r"input shape \(1, 5, 8, 8\) does not match weight shape \(4, 3, 3, 3\)"),
    (lambda: sf.masked_conv2d(torch.randn(1, 4, 8, 8), torch.randn(4, 2, 3, 3),
                              torch.randn(4, 2, 3, 3), 1.0, groups=3), ValueError,
     "groups=3 must be a positive int dividing out_channels=4"),
    (lambda: sf.masked_conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 2, 2),
                              torch.randn(4, 3, 2, 2), 1.0, padding="same"), ValueError,
     "padding='same' needs an odd effective kernel"),
    (lambda: sf.masked_conv2d(torch.randn(8, 8), torch.randn(4, 3, 3, 3),
                              torch.randn(4, 3, 3, 3), 1.0), ValueError,
     "input must have 3 \\(unbatched\\) or 4 dims"),
    (lambda: sf.masked_conv2d(torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3),
                              torch.randn(4, 3, 3, 3), 1.0, stride=0), ValueError, "must be >= 1"),
    (lambda: sf.mask_weight(W, torch.randn(6, 4), 1.0), ValueError, "logits shape"),
    (lambda: sf.mask_weight(W.double(), S.double(), 1.0, "hard") + sf.mask_weight(W, S.double(), 1.0),
     TypeError, "logits may be float64 only with a float64 weight"),
])
def test_bad_input_is_rejected_clearly(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_layer_rejects_bad_beta_mode_and_init():
    layer = MaskedLinear(3, 2)
    with pytest.raises(ValueError, match="beta"):
        layer.beta = float("nan")
    with pytest.raises(ValueError, match="mode"):
        layer.mode = "sometimes"
    with pytest.raises(ValueError, match=r"init tensor shape \(3,\) must equal the logits. shape"):
        MaskedLinear(3, 2, init=torch.zeros(3))
    with pytest.raises(TypeError, match="init must be"):
        MaskedLinear(3, 2, init="paper")


def test_non_contiguous_input_gives_the_same_result():
    x = torch.randn(6, 3).t()  # (3, 6), non-contiguous
    torch.testing.assert_close(sf.masked_linear(x, W, S, 2.0), sf.masked_linear(x.contiguous(), W, S, 2.0))
