"""Ablation targets (nn/ablation.py): the removed weights see a reference input
x_ref (the mean input, a learned vector, the corrupted run's input) instead of
zero.  Each layer type at each granularity against the float64 oracle
y = F(x, θ ⊙ m) + F(x_ref, θ ⊙ (1 − m)) + b (m spread over its units by a
Kronecker product), output and the gradients of the logits and of the learned
reference; then whole models: all weights removed under a corrupted ablation
give the corrupted run's output, all kept the clean one."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import subind_fast as sf

from oracle import mask_of, optional_import


def _conv1d_gpt2(n_in, n_out):
    Conv1D = optional_import("transformers.pytorch_utils", "Conv1D")

    return Conv1D(n_out, n_in)


# (plain layer, input shape, how the plain op applies a weight, head layout (axis, units))
LAYERS = {
    "linear": (lambda: nn.Linear(12, 8), (3, 5, 12), lambda x, w, b: F.linear(x, w, b),
               (1, 4)),
    "gpt2_conv1d": (lambda: _conv1d_gpt2(12, 8), (3, 5, 12), lambda x, w, b: x @ w + b,
                    (1, 4)),
    "conv2d": (lambda: nn.Conv2d(3, 6, 3, padding=1), (2, 3, 5, 5),
               lambda x, w, b: F.conv2d(x, w, b, padding=1), None),
}


def _layer(kind, granularity, how, mode):
    make, shape, apply, heads = LAYERS[kind]
    torch.manual_seed(0)
    plain = make().double()
    masked_class = sf.nn.masked_class_for(type(plain))
    layer = masked_class.from_module(
        copy.deepcopy(plain), init=lambda s: s.normal_(), beta=1.5, mode=mode,
        method=sf.nn.MaskMethod("continuous", granularity),
        **({"heads": {id(plain.weight): heads}} if granularity == "head" and heads else {}))
    # from_module shares the weight: the head layout is keyed by that Parameter
    layer.double()
    model = nn.Sequential(layer)
    reference = [torch.randn(shape, dtype=torch.float64) for _ in range(3)]
    sf.nn.set_ablation(model, how, batches=reference if how in ("mean", "learned") else None)
    return plain, model, layer, torch.randn(shape, dtype=torch.float64), reference, apply


def _oracle(plain, layer, x, x_ref, apply, mode):
    leaf = layer.logits.detach().clone().requires_grad_(True)
    run = torch.ones([w // u for w, u in zip(plain.weight.shape, leaf.shape)], dtype=leaf.dtype)
    m = torch.kron(mask_of(leaf, float(layer.beta), mode), run)
    theta = plain.weight.detach()
    out = apply(x, theta * m, plain.bias) + apply(x_ref, theta * (1 - m), torch.zeros_like(
        plain.bias))
    return out, leaf


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("how", ["mean", "learned", "corrupted"])
@pytest.mark.parametrize("granularity", ["weight", "neuron", "head"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_ablated_layer_equals_the_float64_oracle(kind, granularity, how, mode):
    if granularity == "head" and LAYERS[kind][3] is None:
        pytest.skip("a convolution has channels, not heads")
    plain, model, layer, x, reference, apply = _layer(kind, granularity, how, mode)
    if how == "corrupted":
        corrupted = torch.randn_like(x)
        sf.nn.record_corrupted(model, lambda: model(corrupted))
        x_ref = corrupted
    else:
        stacked = torch.stack(reference)  # the mean input: per feature, or per channel
        x_ref = (stacked.mean(dim=(0, 1, 3, 4)) if kind == "conv2d"
                 else stacked.reshape(-1, x.shape[-1]).mean(0))
        assert torch.allclose(layer.ablation_input, x_ref, atol=1e-14)
        if kind == "conv2d":  # the channel means at every position
            x_ref = x_ref.view(1, -1, 1, 1).expand(1, -1, *x.shape[2:])
    learned = None
    if how == "learned":
        learned = layer.ablation_input.detach().clone().requires_grad_(True)
        x_ref = learned.view(1, -1, 1, 1).expand_as(x_ref) if kind == "conv2d" else learned
    expected, leaf = _oracle(plain, layer, x, x_ref, apply, mode)
    ours = model(x)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3),
                           dtype=ours.dtype)
    (ours * upstream).sum().backward()
    (expected * upstream).sum().backward()
    if mode == "soft":
        torch.testing.assert_close(layer.logits.grad, leaf.grad, rtol=1e-9, atol=1e-12)
    if how == "learned":
        assert sf.nn.ablation_parameters(model) == [layer.ablation_input]
        torch.testing.assert_close(layer.ablation_input.grad.reshape(learned.shape), learned.grad,
                                   rtol=1e-9, atol=1e-12)


def _gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40, n_positions=16)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).double().eval()


@pytest.mark.parametrize("granularity", ["weight", "head"])
def test_everything_removed_under_corrupted_ablation_is_the_corrupted_run(granularity):
    plain = _gpt2()
    model = copy.deepcopy(plain)
    sf.mask_model(model, granularity=granularity, init=-1.0, mode="hard")
    sf.nn.set_ablation(model, "corrupted")
    clean, corrupted = torch.randint(0, 40, (2, 7)), torch.randint(0, 40, (2, 7))
    sf.nn.record_corrupted(model, lambda: model(corrupted))
    # the masked head (lm_head) outputs its corrupted-run output: the corrupted logits
    torch.testing.assert_close(model(clean).logits, plain(corrupted).logits, rtol=1e-10,
                               atol=1e-10)
    sf.nn.set_mode(model, "none")  # nothing removed: the clean run
    torch.testing.assert_close(model(clean).logits, plain(clean).logits, rtol=1e-10, atol=1e-10)


def test_ablation_errors_are_named():
    model = nn.Sequential(nn.Linear(4, 3))
    sf.mask_model(model)
    with pytest.raises(ValueError, match="ablation must be one of"):
        sf.nn.set_ablation(model, "resample")
    sf.nn.set_ablation(model, "mean")
    with pytest.raises(RuntimeError, match="no mean input recorded"):
        model(torch.randn(2, 4))
    sf.nn.record_means(model, [torch.randn(5, 4)])
    model(torch.randn(2, 4))
    sf.nn.set_ablation(model, "corrupted")
    with pytest.raises(RuntimeError, match="no corrupted input recorded"):
        model(torch.randn(2, 4))
    sf.nn.record_corrupted(model, lambda: model(torch.randn(3, 4)))
    with pytest.raises(ValueError, match=r"corrupted input has shape \(3, 4\), this input \(2, 4\)"):
        model(torch.randn(2, 4))
    with pytest.raises(ValueError, match="set_ablation\\(model, 'zero'\\) before exporting"):
        sf.unmask_model(model)
    sf.nn.set_ablation(model, "zero")
    sf.unmask_model(model)
    sampled = nn.Sequential(nn.Linear(4, 3))
    sf.mask_model(sampled, method="gumbel")
    with pytest.raises(ValueError, match="deterministic mask"):
        sf.nn.set_ablation(sampled, "corrupted")


def _ablated_llama(how: str):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      vocab_size=60, max_position_embeddings=32)
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config).double().eval()
    model = copy.deepcopy(base)
    sf.mask_model(model, include=["model.layers.*"], init=nn.init.normal_)
    ids = torch.randint(0, 60, (2, 6))
    sf.nn.set_ablation(model, how, batches=[ids[:1], ids[1:]] if how == "mean" else None)
    with torch.no_grad():
        for p in sf.nn.ablation_parameters(model):
            p.normal_()
    return base, model.eval(), ids


@pytest.mark.parametrize("how", ["mean", "learned"])
def test_save_pretrained_round_trips_an_ablation(tmp_path, how):
    """masked_from_pretrained restores the ablation and its inputs: the
    reloaded model computes what the saved one did."""
    _, model, ids = _ablated_llama(how)
    model.save_pretrained(tmp_path)
    LlamaForCausalLM = optional_import("transformers", "LlamaForCausalLM")
    back = sf.nn.masked_from_pretrained(LlamaForCausalLM, tmp_path,
                                        dtype=torch.float64).eval()
    assert {sf.nn.ablation.ablation_of(layer) for layer in sf.masked_layers(back).values()} \
        == {how}
    torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=1e-12)


@pytest.mark.parametrize("how", ["mean", "learned"])
def test_state_dict_round_trips_an_ablation_or_refuses_loudly(how):
    base, model, ids = _ablated_llama(how)
    state = model.state_dict()
    assert {k.rpartition(".")[2] for k in state if "ablation" in k} == {"ablation_code",
                                                                        "ablation_input"}
    fresh = copy.deepcopy(base)
    sf.mask_model(fresh, include=["model.layers.*"])
    with pytest.raises(RuntimeError, match=f"saved with ablation '{how}'"):
        fresh.load_state_dict(state, strict=False)  # never a silently different model
    sf.nn.set_ablation(fresh, how)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.eval()(ids).logits, model(ids).logits, rtol=0, atol=1e-12)
    plain = copy.deepcopy(base)
    sf.mask_model(plain, include=["model.layers.*"])
    sf.nn.set_ablation(plain, "corrupted")
    with pytest.raises(RuntimeError, match=f"this layer ablates 'corrupted'"):
        plain.load_state_dict(state)


def test_a_model_recording_corrupted_inputs_pickles(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    sf.mask_model(model)
    sf.nn.set_ablation(model, "corrupted")
    sf.nn.record_corrupted_before_each_forward(model)
    x = torch.randn(5, 4)
    expected = model(x)
    torch.save(model, tmp_path / "m.pt")
    back = torch.load(tmp_path / "m.pt", weights_only=False)
    torch.testing.assert_close(back(x), expected)
