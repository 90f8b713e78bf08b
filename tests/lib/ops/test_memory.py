"""The memory promise: backward keeps nothing weight-sized besides the
inputs and parameters themselves (counted with saved_tensors_hooks)."""
import pytest
import torch
import torch.nn.functional as F

import subind_fast as sf
from subind_fast.testing.baselines import eager_composite
from oracle import extra_saved_bytes


def _linear_inputs(n=256, k=192, m=8):
    x = torch.randn(m, k, requires_grad=True)
    w = torch.randn(n, k)
    s = torch.randn(n, k, requires_grad=True)
    b = torch.randn(n, requires_grad=True)
    return x, w, s, b


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_masked_linear_saves_no_weight_sized_tensor(mode):
    x, w, s, b = _linear_inputs()
    beta = torch.tensor(3.0)  # as a layer passes its β buffer
    extra, out = extra_saved_bytes(lambda: sf.masked_linear(x, w, s, beta, b, mode),
                                   [x, w, s, b, beta])
    assert extra == 0
    out.sum().backward()


def test_eager_composite_keeps_8_bytes_per_weight():
    """The baseline we replace, measured the same way (sanity of the probe):
    σ(βs) and W_eff, 4 bytes each per weight."""
    x, w, s, b = _linear_inputs()
    extra, _ = extra_saved_bytes(lambda: F.linear(x, w * torch.sigmoid(3.0 * s), b), [x, w, s, b])
    assert extra == 8 * w.numel()
    layer = eager_composite(torch.nn.Linear(w.shape[1], w.shape[0]), init=0.1, beta=3.0)
    extra, _ = extra_saved_bytes(lambda: layer(x), [x, *layer.parameters(), *layer.buffers()])
    assert extra == 8 * w.numel()


def test_masked_conv_and_gpt2_layout_save_nothing_extra():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(5, 3, 3, 3)
    s = torch.randn(5, 3, 3, 3, requires_grad=True)
    beta = torch.tensor(2.0)
    extra, _ = extra_saved_bytes(lambda: sf.masked_conv2d(x, w, s, beta, padding=1),
                                 [x, w, s, beta])
    assert extra == 0
    layer = sf.nn.MaskedGPT2Conv1D(24, 16)
    xin = torch.randn(3, 16, requires_grad=True)
    extra, _ = extra_saved_bytes(lambda: layer(xin), [xin, *layer.parameters(), *layer.buffers()])
    assert extra == 0
