"""The mask methods (nn/methods.py) and the sampled modes of the ops: the
noise, the float64 oracle (independent autograd composites), the memory
promise, opcheck and torch.compile, neuron granularity, samples per batch,
and the selection methods as layer methods."""
import pytest
import torch
import torch.nn.functional as F

import subind_fast as sf
from subind_fast.ops import noise as noise_lib
from subind_fast.ops import reference
from subind_fast.ops.choice import backend_info
from subind_fast.nn.methods import MaskMethod
from oracle import (assert_matches_oracle, composite_sampled_weight, extra_saved_bytes, leaf,
                    needs_inductor_cpu, run_with_grads)

SAMPLED = ["concrete", "gumbel"]
EPS = 0.1


def test_noise_is_uniform_keyed_and_open_interval():
    offsets = torch.arange(200_000)
    u = noise_lib.uniform(torch.tensor([7, 0]), offsets, torch.float64)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 3e-3 and abs(u.var().item() - 1 / 12) < 1e-3
    hist = torch.histc(u, bins=20, min=0, max=1) / u.numel()
    assert (hist - 0.05).abs().max() < 4e-3
    assert torch.equal(u, noise_lib.uniform(torch.tensor([7, 0]), offsets, torch.float64))
    other = noise_lib.uniform(torch.tensor([7, 1]), offsets, torch.float64)
    assert abs(torch.corrcoef(torch.stack([u, other]))[0, 1].item()) < 0.01
    big_seed = noise_lib.uniform(torch.tensor([2 ** 62 - 1, 3]), offsets[:10], torch.float64)
    assert torch.isfinite(big_seed).all()


@pytest.mark.parametrize("mode", SAMPLED)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (127, 33)])
def test_sampled_mask_weight_matches_the_float64_composite(mode, shape):
    torch.manual_seed(sum(shape))
    w, s = torch.randn(shape), torch.randn(shape) * 2
    key, beta = torch.tensor([1234, 5]), 1.5
    theta, logits = leaf(w), leaf(s)
    ours, ours_grads = run_with_grads(
        lambda a, b: sf.mask_weight(a, b, beta, mode, key), [theta, logits])
    ref, ref_grads = run_with_grads(
        lambda a, b: composite_sampled_weight(a, b, beta, mode, key),
        [leaf(w, torch.float64), leaf(s, torch.float64)])
    if mode == "gumbel":  # fp32 vs fp64 may flip a threshold sitting on s + L ≈ 0
        flipped = ((ours != 0) != (ref != 0)).sum().item()
        assert flipped <= max(1, ours.numel() // 5000)
        keep = (ours != 0) == (ref != 0)
        ours, ref = ours[keep], ref[keep]
        ours_grads = [g[keep] for g in ours_grads]
        ref_grads = [g[keep] for g in ref_grads]
    assert_matches_oracle(ours, ref, what="W_eff")
    for g, r, name in zip(ours_grads, ref_grads, ("dtheta", "ds")):
        assert_matches_oracle(g, r, what=name)


@pytest.mark.parametrize("mode", SAMPLED)
def test_masked_linear_and_conv_in_sampled_modes_match_the_oracle(mode):
    torch.manual_seed(1)
    key, beta = torch.tensor([99, 2]), torch.tensor(1.5)
    x, w, s, b = torch.randn(3, 5, 17), torch.randn(9, 17), torch.randn(9, 17), torch.randn(9)
    tensors = [leaf(x), leaf(w), leaf(s), leaf(b)]
    ours, ours_grads = run_with_grads(
        lambda *t: sf.masked_linear(t[0], t[1], t[2], beta, t[3], mode, key), tensors)
    ref, ref_grads = run_with_grads(
        lambda *t: F.linear(t[0], composite_sampled_weight(t[1], t[2], 1.5, mode, key), t[3]),
        [leaf(t, torch.float64) for t in (x, w, s, b)])
    assert_matches_oracle(ours, ref, what="y")
    for g, r, name in zip(ours_grads, ref_grads, "xwsb"):
        assert_matches_oracle(g, r, what=f"d{name}")

    cx, cw, cs = torch.randn(2, 4, 6, 6), torch.randn(6, 2, 3, 3), torch.randn(6, 2, 3, 3)
    ours, ours_grads = run_with_grads(
        lambda a, c, d: sf.masked_conv2d(a, c, d, beta, None, 1, 1, 1, 2, mode, key),
        [leaf(cx), leaf(cw), leaf(cs)])
    ref, ref_grads = run_with_grads(
        lambda a, c, d: F.conv2d(a, composite_sampled_weight(c, d, 1.5, mode, key), None, 1, 1,
                                 1, 2),
        [leaf(t, torch.float64) for t in (cx, cw, cs)])
    assert_matches_oracle(ours, ref, what="conv y")
    for g, r, name in zip(ours_grads, ref_grads, "xws"):
        assert_matches_oracle(g, r, what=f"conv d{name}")


@pytest.mark.parametrize("mode", SAMPLED)
def test_cpu_kernels_and_reference_backend_agree_on_a_transposed_layout(mode):
    # GPT-2's Conv1D: the op receives transposed views; both backends walk memory order.
    w, s = torch.randn(33, 20), torch.randn(33, 20)
    key, beta = torch.tensor([5, 9]), torch.tensor(2.0)
    cpu = torch.ops.subind.mask_weight(w.t(), s.t(), beta, mode, key)
    ref = reference.mask_weight(w.t(), s.t(), beta, mode, key)
    assert cpu.stride() == w.t().stride()
    if mode == "gumbel":
        assert ((cpu != 0) != (ref != 0)).sum() <= 1
    else:
        torch.testing.assert_close(cpu, ref, atol=1e-6, rtol=1e-5)
    layer = sf.nn.MaskedGPT2Conv1D(20, 33, method="hard_concrete", init=0.3)
    assert float(layer.beta) == 1.5  # the method's default β (1/τ, Louizos et al.'s τ = 2/3)
    layer.__dict__["mask_method"] = MaskMethod("hard_concrete",
                                               generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 33)
    seed = torch.randint(0, 2 ** 62, (), generator=torch.Generator().manual_seed(0))
    expected = x @ composite_sampled_weight(layer.weight.double(), layer.logits.double(), 1.5,
                                            "concrete", torch.stack([seed, seed * 0])
                                            ).float() + layer.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", SAMPLED)
def test_sampled_modes_save_only_their_inputs_and_a_16_byte_key(mode):
    x = torch.randn(8, 192, requires_grad=True)
    w, b = torch.randn(256, 192), torch.randn(256, requires_grad=True)
    s = torch.randn(256, 192, requires_grad=True)
    beta, key = torch.tensor(1.5), torch.tensor([3, 4])
    extra, out = extra_saved_bytes(lambda: sf.masked_linear(x, w, s, beta, b, mode, key),
                                   [x, w, s, b, beta, key])
    assert extra == 0
    out.sum().backward()
    cx, cw = torch.randn(2, 3, 8, 8, requires_grad=True), torch.randn(5, 3, 3, 3)
    cs = torch.randn(5, 3, 3, 3, requires_grad=True)
    extra, _ = extra_saved_bytes(lambda: sf.masked_conv2d(cx, cw, cs, beta, padding=1,
                                                          mode=mode, noise=key),
                                 [cx, cw, cs, beta, key])
    assert extra == 0


@pytest.mark.parametrize("method", ["hard_concrete", "gumbel"])
def test_a_layer_saves_nothing_weight_sized_in_training(method):
    layer = sf.nn.MaskedLinear(192, 256, method=method)
    x = torch.randn(8, 192, requires_grad=True)
    extra, out = extra_saved_bytes(lambda: layer(x), [x, *layer.parameters(), *layer.buffers()])
    assert extra <= 64  # the noise key (and its seed) of one draw
    out.sum().backward()


def test_neuron_granularity_saves_one_output_not_a_weight():
    layer = sf.nn.MaskedLinear(192, 256, method=MaskMethod("continuous", "neuron"))
    x = torch.randn(8, 192, requires_grad=True)
    extra, _ = extra_saved_bytes(lambda: layer(x), [x, *layer.parameters(), *layer.buffers()])
    assert extra <= 8 * 256 * 4 + 8 * 256 * 4  # the pre-mask output and a few unit vectors
    assert extra < layer.weight.numel()


def _opcheck_samples():
    x, w = torch.randn(4, 3, 6, requires_grad=True), torch.randn(5, 6, requires_grad=True)
    s, b = torch.randn(5, 6, requires_grad=True), torch.randn(5, requires_grad=True)
    key, beta = torch.tensor([11, 1]), torch.tensor(1.5)
    ops = torch.ops.subind
    for mode in SAMPLED:
        yield ops.masked_linear, (x, w, s, b, beta, mode, key)
        yield ops.masked_linear_backward, (torch.randn(4, 3, 5), x.detach(), w.detach(),
                                           s.detach(), beta, mode, [True, True, True, True], key)
        yield ops.mask_weight, (w, s, beta, mode, key)
        yield ops.mask_weight_backward, (torch.randn(5, 6), w.detach(), s.detach(), beta, mode,
                                         True, True, True, key)
        cx, cw = torch.randn(2, 4, 7, 7, requires_grad=True), torch.randn(6, 2, 3, 3)
        cs = torch.randn(6, 2, 3, 3, requires_grad=True)
        yield ops.masked_conv, (cx, cw, cs, None, beta, mode, [1, 1], [1, 1], [1, 1], 2, key)
        yield ops.masked_conv_backward, (torch.randn(2, 6, 7, 7), cx.detach(), cw, cs.detach(),
                                         beta, mode, [1, 1], [1, 1], [1, 1], 2,
                                         [True, False, True, False], key)


@pytest.mark.parametrize("index", range(len(list(_opcheck_samples()))))
def test_opcheck_sampled_modes(index):
    op, args = list(_opcheck_samples())[index]
    torch.library.opcheck(op, args)


class _Small(torch.nn.Module):
    def __init__(self, method):
        super().__init__()
        self.conv = sf.nn.MaskedConv2d(3, 4, 3, padding=1, beta=1.5, method=method, init=0.5)
        self.lin = sf.nn.MaskedLinear(4 * 6 * 6, 10, beta=1.5, method=method, init=0.5)

    def forward(self, x):
        return self.lin(torch.relu(self.conv(x)).flatten(1))


@needs_inductor_cpu
@pytest.mark.slow
@pytest.mark.parametrize("method", [MaskMethod("hard_concrete"), MaskMethod("gumbel", n_samples=2),
                                    MaskMethod("continuous", "neuron"),
                                    MaskMethod("hard_concrete", "neuron", 2)])
def test_torch_compile_fullgraph_matches_eager_for_each_method(method):
    torch._dynamo.reset()
    model = _Small(method)
    x = torch.randn(4, 3, 6, 6)

    def step(fn):
        torch.manual_seed(0)  # the layers draw their noise seeds from torch's generator
        out = fn(x)
        (out.square().sum() + sf.l0_penalty(model)).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad()
        return out.detach(), grads

    eager_out, eager_grads = step(model)
    with torch._inductor.config.patch(fallback_random=True):  # eager's RNG stream
        out, grads = step(torch.compile(model, fullgraph=True))
    torch.testing.assert_close(out, eager_out, atol=1e-5, rtol=1e-4)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-4)


def test_samples_per_batch_apply_sample_k_to_slice_k():
    gen = torch.Generator().manual_seed(3)
    layer = sf.nn.MaskedLinear(7, 5, method=MaskMethod("gumbel", n_samples=3, generator=gen))
    torch.nn.init.normal_(layer.logits)
    x = torch.randn(8, 7)
    y = layer(x)
    seed = torch.randint(0, 2 ** 62, (), generator=torch.Generator().manual_seed(3))
    parts = torch.tensor_split(x, 3)
    expected = torch.cat([sf.masked_linear(p, layer.weight, layer.logits, layer.beta, layer.bias,
                                           "gumbel", torch.stack([seed, torch.tensor(k)]))
                          for k, p in enumerate(parts)])
    torch.testing.assert_close(y, expected)
    assert not torch.equal(y[:3], sf.masked_linear(parts[0], layer.weight, layer.logits,
                                                   layer.beta, layer.bias, "gumbel",
                                                   torch.stack([seed, torch.tensor(1)])))
    with pytest.raises(ValueError, match="n_samples=3 mask samples need a batched input"):
        layer(torch.randn(2, 7))


def test_a_seeded_generator_reproduces_the_masks_and_eval_is_deterministic():
    def run(seed):
        torch.manual_seed(0)
        layer = sf.nn.MaskedLinear(
            6, 4, method=MaskMethod("hard_concrete", generator=torch.Generator().manual_seed(seed)))
        torch.manual_seed(1)  # a different default stream changes nothing
        return layer(torch.ones(2, 6)), layer
    a, layer = run(5)
    b, _ = run(5)
    c, _ = run(6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    layer.eval()
    hard = sf.masked_linear(torch.ones(2, 6), layer.weight, layer.logits, 1.0, layer.bias, "hard")
    assert torch.equal(layer(torch.ones(2, 6)), hard)


@pytest.mark.parametrize("method", ["continuous", "hard_concrete", "gumbel"])
def test_neuron_granularity_equals_rows_of_one_shared_logit(method):
    torch.manual_seed(0)
    units = sf.nn.MaskedLinear(9, 6, method=MaskMethod(method, "neuron"), beta=2.0)
    torch.nn.init.normal_(units.logits)
    x = torch.randn(4, 9)
    expanded = units.logits.detach().expand(6, 9)
    units.eval()
    hard = F.linear(x, units.weight * (expanded > 0), units.bias)
    torch.testing.assert_close(units(x), hard)
    units.train()
    if method == "continuous":
        s = expanded.clone().requires_grad_()
        y_ref = sf.masked_linear(x, units.weight, s, 2.0, units.bias, "soft")
        y_ref.square().sum().backward()
        y = units(x)
        y.square().sum().backward()
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(units.logits.grad, s.grad.sum(1, keepdim=True))
    sub = sf.nn.subnetwork_of(torch.nn.Sequential(units))
    assert torch.equal(sub.mask("0.weight"), expanded > 0)
    kept = int((units.logits > 0).sum()) * 9
    assert sf.nn.density(torch.nn.Sequential(units)) == pytest.approx(kept / 54)


def test_penalties_per_method():
    s = torch.tensor([[-3.0, 0.0, 2.0]])
    for name, expected in [
            ("continuous", torch.sigmoid(1.5 * s).sum()),
            ("hard_concrete", torch.sigmoid(s - torch.log(torch.tensor(EPS / (1 + EPS))) / 1.5).sum()),
            ("gumbel", s.sum())]:
        layer = sf.nn.MaskedLinear(3, 1, method=name, init=s, beta=1.5)
        torch.testing.assert_close(layer.l0_penalty(), expected)
        layer.l0_penalty().backward()
        ref = s.clone().requires_grad_()
        expected_fn = {"continuous": lambda t: torch.sigmoid(1.5 * t).sum(),
                       "hard_concrete": lambda t: torch.sigmoid(
                           t - torch.log(torch.tensor(EPS / (1 + EPS))) / 1.5).sum(),
                       "gumbel": lambda t: t.sum()}[name]
        expected_fn(ref).backward()
        torch.testing.assert_close(layer.logits.grad, ref.grad)
    units = sf.nn.MaskedLinear(3, 2, method=MaskMethod("continuous", "neuron"), init=0.0)
    assert units.l0_penalty().item() == pytest.approx(2 * 0.5 * 3)  # each unit counts its 3 weights


def test_mask_model_installs_a_selected_subnetwork():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    expected = sf.selection.magnitude(model, 0.25, "global")
    sf.mask_model(model, subnetwork=expected)
    assert sf.nn.subnetwork_of(model) == expected
    assert all(not layer.logits.requires_grad for layer in sf.masked_layers(model).values())
    model.train()  # an installed subnetwork stays hard while training
    x = torch.randn(2, 8)
    masks = expected.masks()
    ref = F.linear(torch.relu(F.linear(x, model[0].weight * masks["0.weight"], model[0].bias)),
                   model[2].weight * masks["2.weight"], model[2].bias)
    torch.testing.assert_close(model(x), ref)

    tuned = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    before = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    expected = sf.selection.lottery_ticket(tuned, before, 0.1)
    sf.mask_model(tuned, subnetwork=sf.selection.select("lottery_ticket", tuned, 0.1,
                                                        pretrained=before))
    assert sf.nn.subnetwork_of(tuned) == expected
    with pytest.raises(ValueError, match="has no mask for 0.weight"):
        sf.mask_model(torch.nn.Sequential(torch.nn.Linear(8, 6)),
                      subnetwork=sf.Subnetwork.from_masks({"x": torch.ones(2, dtype=torch.bool)}))


def test_bad_method_arguments_are_named():
    with pytest.raises(ValueError, match="method must be one of"):
        sf.nn.MaskedLinear(3, 2, method="dropout")
    with pytest.raises(ValueError, match="granularity must be one of"):
        MaskMethod("gumbel", "edge")
    with pytest.raises(ValueError, match="n_samples=2 needs a sampled method"):
        MaskMethod("continuous", n_samples=2)
    with pytest.raises(ValueError, match="method must be one of"):
        sf.mask_model(torch.nn.Sequential(torch.nn.Linear(3, 2)), method="magnitude")
    with pytest.raises(ValueError, match="needs pretrained="):
        sf.selection.select("lottery_ticket", torch.nn.Sequential(torch.nn.Linear(3, 2)), 0.5)
    with pytest.raises(ValueError, match="no neuron granularity"):
        sf.nn.MaskedMultiheadAttention(8, 2, method=MaskMethod("continuous", "neuron"))
    with pytest.raises(ValueError, match="noise must be an int64 tensor"):
        sf.masked_linear(torch.randn(2, 3), torch.randn(4, 3), torch.randn(4, 3), 1.0, None,
                         "gumbel", torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="samples its mask: noise must be"):
        sf.masked_linear(torch.randn(2, 3), torch.randn(4, 3), torch.randn(4, 3), 1.0, None,
                         "concrete")
    with pytest.raises(ValueError, match="deterministic; pass noise=None"):
        sf.mask_weight(torch.randn(4, 3), torch.randn(4, 3), 1.0, "soft", torch.tensor([1, 2]))


def test_sampled_modes_are_served_by_the_same_ops():
    info = backend_info()
    assert info["devices"]["cpu"]["masked_linear"] == "cpu (C++)"
    assert info["devices"]["cuda"]["mask_weight"] == (
        "cuda (C++ extension)" if info["compiled"]["_C_cuda (cuda)"] else "triton")