"""The L0 penalty fused into the masked ops (masked_linear_l0, masked_conv_l0
and the backward ops' grad_l0), against the float64 oracle
(ops/mask_math.py: penalty_and_slope), and the layers' use of it through
sf.l0_penalty: the same numbers as the separate penalty, handed out only
while current."""
import copy
import pickle

import pytest
import torch

import subind_fast as sf
from subind_fast.ops import functional as SF
from subind_fast.ops.mask_math import penalty_and_slope
from subind_fast.nn.masked_forward import _FORWARD_PENALTIES

MODES = ("soft", "concrete", "gumbel")


def _key(mode):
    return torch.tensor([11, 3]) if mode != "soft" else None


def _oracle(logits, beta, mode, weight_of_penalty):
    """(Σp, ∂(c·Σp)/∂s) in float64."""
    p, slope = penalty_and_slope(logits.detach().double(), torch.tensor(beta), mode)
    return p.sum(), weight_of_penalty * slope


def _check(fused_call, plain_call, logits, beta, mode, dtype):
    """The fused op's output and penalty, and the logits' gradient of
    L = Σ(y·r) + c·penalty, against the plain op plus the oracle's penalty."""
    c = 0.37
    y, penalty = fused_call()
    r = torch.randn_like(y)
    ((y * r).sum() + c * penalty).backward()
    fused_grad, logits.grad = logits.grad.clone(), None
    y_plain = plain_call()
    (y_plain * r).sum().backward()
    value, penalty_grad = _oracle(logits, beta, mode, c)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, y_plain, **tol)
    assert penalty.dtype == logits.dtype
    torch.testing.assert_close(penalty.double(), value, **tol)
    torch.testing.assert_close(fused_grad.double(), logits.grad.double() + penalty_grad, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["rows = outputs", "rows = inputs"])
@pytest.mark.parametrize("m", [3, 700])  # blocked schedule at small M, one block at large M
def test_masked_linear_with_penalty(dtype, mode, layout, m):
    torch.manual_seed(0)
    n_out, n_in = 300, 230
    weight = torch.randn(n_out, n_in, dtype=dtype, requires_grad=True)
    logits = (2 * torch.randn(n_out, n_in, dtype=dtype)).requires_grad_()
    if layout == "rows = inputs":  # GPT-2's Conv1D hands over transposed views
        weight = torch.randn(n_in, n_out, dtype=dtype).t().requires_grad_()
        logits = (2 * torch.randn(n_in, n_out, dtype=dtype)).t().detach().requires_grad_()
    x = torch.randn(m, n_in, dtype=dtype, requires_grad=True)
    bias = torch.randn(n_out, dtype=dtype)
    beta, key = 2.5, _key(mode)
    _check(lambda: SF.masked_linear(x, weight, logits, beta, bias, mode, key, with_penalty=True),
           lambda: SF.masked_linear(x, weight, logits, beta, bias, mode, key),
           logits, beta, mode, dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_blocked_linear_sums_the_penalty_over_thread_shares(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(1)
        weight = torch.randn(1500, 768, requires_grad=True)
        logits = torch.randn(1500, 768).requires_grad_()
        x = torch.randn(8, 768)
        _check(lambda: SF.masked_linear(x, weight, logits, 1.7, None, "soft", with_penalty=True),
               lambda: SF.masked_linear(x, weight, logits, 1.7, None, "soft"),
               logits, 1.7, "soft", torch.float32)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("mode", MODES)
def test_masked_conv_with_penalty(mode):
    torch.manual_seed(2)
    dtype = torch.float64
    weight = torch.randn(6, 2, 3, 3, dtype=dtype, requires_grad=True)
    logits = torch.randn(6, 2, 3, 3, dtype=dtype).requires_grad_()
    x = torch.randn(2, 4, 7, 7, dtype=dtype, requires_grad=True)
    key = _key(mode)
    _check(lambda: SF.masked_conv2d(x, weight, logits, 1.5, None, 1, 1, 1, 2, mode, key,
                                    with_penalty=True),
           lambda: SF.masked_conv2d(x, weight, logits, 1.5, None, 1, 1, 1, 2, mode, key),
           logits, 1.5, mode, dtype)


def test_only_the_penalty_used_still_reaches_the_logits():
    logits = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 4, dtype=torch.float64)
    _, penalty = SF.masked_linear(torch.randn(3, 4, dtype=torch.float64), weight, logits, 2.0,
                                  with_penalty=True)
    penalty.backward()
    torch.testing.assert_close(logits.grad, _oracle(logits, 2.0, "soft", 1.0)[1])


def test_a_penalty_outside_the_training_modes_is_an_error():
    weight, logits = torch.randn(5, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="with_penalty needs a training mode"):
        SF.masked_linear(torch.randn(3, 4), weight, logits, 1.0, mode="hard", with_penalty=True)
    with pytest.raises(RuntimeError, match="training modes .* got mode 'none'"):
        torch.ops.subind.masked_linear_l0(torch.randn(3, 4), weight, logits, None,
                                          torch.tensor(1.0), "none")


# ---------------------------------------------------------------- the layers
def _model(method="continuous"):
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    sf.mask_model(model, method=method, init=0.2)
    for layer in sf.masked_layers(model).values():
        with torch.no_grad():
            layer.logits.normal_(0, 1.5)
    sf.set_beta(model, 2.0)
    sf.l0_penalty(model)  # asked for once: from now on the training forwards compute it
    return model.train()


def _separate_penalty(model):
    return sum(penalty_and_slope(layer.logits.detach().double(), layer.beta,
                                 layer.mask_method.training_op_mode)[0].sum()
               for layer in sf.masked_layers(model).values())


@pytest.mark.parametrize("method", ["continuous", "hard_concrete", "gumbel"])
def test_l0_penalty_takes_the_forward_penalty_with_the_same_numbers(method):
    model = _model(method)
    layers = list(sf.masked_layers(model).values())
    model(torch.randn(8, 12))
    assert all(layer in _FORWARD_PENALTIES for layer in layers)
    penalty = sf.l0_penalty(model)
    torch.testing.assert_close(penalty.double(), _separate_penalty(model), rtol=1e-6, atol=1e-4)
    assert all(layer.forward_penalty() is None for layer in layers)  # handed out once


def test_a_stale_forward_penalty_is_not_used():
    model = _model()
    x = torch.randn(8, 12)
    layers = list(sf.masked_layers(model).values())
    model(x)
    with torch.no_grad():
        layers[0].logits.add_(0.5)  # an optimizer step
    sf.set_beta(model, 3.0)
    assert all(layer.forward_penalty() is None for layer in layers)
    model(x).sum().backward()  # backward spends the graph the kept penalty belongs to
    assert all(layer.forward_penalty() is None for layer in layers)
    with torch.no_grad():
        model(x)  # no graph: nothing kept
    assert all(layer.forward_penalty() is None for layer in layers)
    penalty = sf.l0_penalty(model)  # the separate pass
    torch.testing.assert_close(penalty.double(), _separate_penalty(model), rtol=1e-6, atol=1e-4)


def test_a_layer_never_asked_for_its_penalty_computes_none():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16))
    sf.mask_model(model)
    model.train()(torch.randn(4, 12))
    assert not any(layer in _FORWARD_PENALTIES for layer in sf.masked_layers(model).values())


def test_a_layer_with_a_kept_penalty_copies_and_pickles():
    model = _model()
    model(torch.randn(4, 12))
    copy.deepcopy(model)
    pickle.loads(pickle.dumps(model))
