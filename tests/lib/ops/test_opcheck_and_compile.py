"""torch.library.opcheck on every op (CPU backend) and torch.compile(fullgraph)."""
import pytest
import torch

import subind_fast as sf
from subind_fast.ops import library
from oracle import needs_inductor_cpu

torch_ops = torch.ops.subind


def _lin(requires_grad=True):
    x = torch.randn(4, 3, 6, requires_grad=requires_grad)
    w = torch.randn(5, 6, requires_grad=requires_grad)
    s = torch.randn(5, 6, requires_grad=requires_grad)
    b = torch.randn(5, requires_grad=requires_grad)
    return x, w, s, b


def _conv():
    x = torch.randn(2, 4, 7, 7, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    s = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    return x, w, s, b


def _samples():
    """One call per op and variant; β is a one-element tensor, as layers pass it."""
    x, w, s, b = _lin()
    g = torch.randn(4, 3, 5)
    yield torch_ops.masked_linear, (x, w, s, b, torch.tensor(2.0), "soft")
    yield torch_ops.masked_linear, (x, w, s, None, torch.tensor(2.0), "hard")
    yield torch_ops.masked_linear, (x, w.t().contiguous().t()[:, :], s, b, torch.tensor(2.0), "none")
    yield torch_ops.masked_linear_backward, (g, x.detach(), w.detach(), s.detach(), torch.tensor(2.0), "soft",
                                             [True, True, True, True])
    yield torch_ops.masked_linear_backward, (g, x.detach(), w.detach(), s.detach(), torch.tensor(2.0), "hard",
                                             [True, False, True, False])
    yield torch_ops.masked_linear_l0, (x, w, s, b, torch.tensor(2.0), "soft")
    yield torch_ops.masked_linear_l0, (x, w, s, b, torch.tensor(1.5), "concrete",
                                       torch.tensor([7, 1]))
    yield torch_ops.masked_linear_backward, (g, x.detach(), w.detach(), s.detach(), torch.tensor(2.0), "soft",
                                             [True, True, True, True], None, torch.tensor(0.3))
    yield torch_ops.masked_linear_backward, (g, x.detach(), w.detach(), s.detach(), torch.tensor(1.0), "gumbel",
                                             [False, False, True, False], torch.tensor([3, 0]),
                                             torch.tensor(0.7))
    yield torch_ops.mask_weight, (w, s, torch.tensor(3.0), "soft")
    # the sampled modes, each with its noise key
    yield torch_ops.masked_linear, (x, w, s, b, torch.tensor(1.5), "concrete", torch.tensor([4, 0]))
    yield torch_ops.masked_linear, (x, w, s, None, torch.tensor(1.0), "gumbel", torch.tensor([4, 1]))
    yield torch_ops.mask_weight, (w, s, torch.tensor(1.5), "concrete", torch.tensor([9, 2]))
    yield torch_ops.mask_weight_backward, (torch.randn(5, 6), w.detach(), s.detach(),
                                           torch.tensor(1.0), "gumbel", True, True, True,
                                           torch.tensor([9, 3]))
    yield torch_ops.masked_conv, (*_conv()[:3], None, torch.tensor(1.5), "concrete", [1, 1],
                                  [1, 1], [1, 1], 2, torch.tensor([6, 0]))
    yield torch_ops.mask_weight, (w.detach().t(), s.detach().t(), torch.tensor(3.0), "hard")
    yield torch_ops.mask_weight_backward, (torch.randn(5, 6), w.detach(), s.detach(), torch.tensor(3.0), "soft",
                                           True, True, True)
    yield torch_ops.sigmoid_sum, (s, torch.tensor(3.0))
    yield torch_ops.sigmoid_sum_backward, (torch.tensor(2.0), s.detach(), torch.tensor(3.0))
    cx, cw, cs, cb = _conv()
    yield torch_ops.masked_conv, (cx, cw, cs, cb, torch.tensor(1.5), "soft", [1, 1], [1, 1], [1, 1], 2)
    yield torch_ops.masked_conv, (cx, cw, cs, None, torch.tensor(1.5), "hard", [2, 1], [0, 1], [1, 2], 2)
    yield torch_ops.masked_conv_l0, (cx, cw, cs, cb, torch.tensor(1.5), "soft", [1, 1], [1, 1], [1, 1], 2)
    yield torch_ops.masked_conv_l0, (cx, cw, cs, None, torch.tensor(1.5), "gumbel", [1, 1], [0, 0], [1, 1], 2,
                                     torch.tensor([5, 2]))
    cg = torch.randn(2, 6, 7, 7)
    yield torch_ops.masked_conv_backward, (cg, cx.detach(), cw.detach(), cs.detach(), torch.tensor(1.5), "soft",
                                           [1, 1], [1, 1], [1, 1], 2, [True, True, True, True])
    yield torch_ops.masked_conv_backward, (cg, cx.detach(), cw.detach(), cs.detach(), torch.tensor(1.5), "soft",
                                           [1, 1], [1, 1], [1, 1], 2, [True, False, True, True], None,
                                           torch.tensor(2.5))
    # The optimizer steps mutate the parameter and its state in place.
    p, grad = torch.randn(37), torch.randn(37)
    bits = sf.pack_bits(torch.rand(37) < 0.3)
    yield torch_ops.adamw_step, (p, grad, torch.rand(37), torch.rand(37), torch.rand(37), bits,
                                 1e-3, 0.9, 0.999, 1e-8, 1e-2, 1e-2, 1.3)
    yield torch_ops.adamw_step, (p, grad, torch.rand(37), torch.rand(37), torch.empty(0),
                                 torch.empty(0, dtype=torch.uint8), 1e-3, 0.9, 0.999, 1e-8, 0.0,
                                 1e-2, 1.3)
    yield torch_ops.sgd_step, (p, grad, torch.rand(37), bits, 0.1, 0.9, 0.0, 1e-4, True, False)
    yield torch_ops.sgd_step, (p, grad, torch.empty(0), bits, 0.1, 0.0, 0.0, 0.0, False, True)


@pytest.mark.parametrize("index", range(len(list(_samples()))))
def test_opcheck(index):
    op, args = list(_samples())[index]
    torch.library.opcheck(op, args)


def test_every_op_is_opchecked():
    checked = {str(op).removeprefix("subind.") for op, _ in _samples()}
    assert checked == set(library.OP_NAMES)


class _Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = sf.nn.MaskedConv2d(3, 4, 3, padding=1, beta=2.0)
        self.lin = sf.nn.MaskedLinear(4 * 6 * 6, 10, beta=2.0)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.lin(h.flatten(1))


@needs_inductor_cpu
@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = _Small()
    for layer in sf.masked_layers(model).values():
        torch.nn.init.normal_(layer.logits, 0.0, 0.5)
    x = torch.randn(2, 3, 6, 6)
    eager_out = model(x)
    eager_out.square().sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    torch.testing.assert_close(out, eager_out)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)
    loss = compiled(x).sum() + 1e-3 * sf.l0_penalty(model)
    loss.backward()
    model.eval()
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))
