"""subind_fast.nn layers and whole-model helpers."""
import pytest
import torch
from torch import nn

import subind_fast as sf
from subind_fast.nn import (MaskedConv1d, MaskedConv2d, MaskedGPT2Conv1D, MaskedLinear,
                            l0_penalty, mask_model, masked_layers, set_beta, set_mode,
                            unmask_model)

from oracle import optional_import


def _randomise_logits(model, std=0.5):
    for layer in masked_layers(model).values():
        with torch.no_grad():
            layer.logits.normal_(0.0, std)


def test_masked_linear_defaults_follow_the_paper():
    layer = MaskedLinear(6, 4)
    assert layer.logits.dtype == torch.float32
    assert torch.all(layer.logits == -0.1)  # Appendix A
    assert not layer.weight.requires_grad and layer.logits.requires_grad
    assert layer.mode == "soft"
    layer.eval()
    assert layer.mode == "hard"
    layer.mode = "none"
    assert layer.mode == "none"
    layer.mode = None
    assert layer.mode == "hard"
    assert layer.density() == 0.0


def test_l0_hard_mask_density():
    layer = MaskedLinear(10, 10, init=lambda t: t.copy_(torch.linspace(-1, 1, 100).view(10, 10)),
                         beta=7.0)
    expected = torch.sigmoid(7.0 * layer.logits.detach()).sum()
    assert layer.l0_penalty().item() == pytest.approx(expected.item(), rel=1e-6)
    assert layer.hard_mask().dtype == torch.bool
    assert layer.density() == pytest.approx(0.5)
    layer.l0_penalty().backward()
    assert layer.logits.grad is not None


def test_from_module_shares_parameters_and_to_module_bakes_the_hard_mask():
    plain = nn.Linear(8, 5)
    layer = MaskedLinear.from_module(plain, init=0.0, beta=3.0)
    assert layer.weight is plain.weight and layer.bias is plain.bias
    _randomise_logits(nn.ModuleDict({"l": layer}))
    layer.eval()
    x = torch.randn(3, 8)
    dense = layer.to_module()
    assert type(dense) is nn.Linear
    torch.testing.assert_close(dense(x), layer(x))
    torch.testing.assert_close(dense.weight, plain.weight * (layer.logits > 0))


@pytest.mark.parametrize("cls,plain,shape", [
    (MaskedConv1d, nn.Conv1d(3, 4, 3, padding=1, padding_mode="reflect"), (2, 3, 9)),
    (MaskedConv2d, nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 9, 9)),
    (MaskedConv2d, nn.Conv2d(3, 5, (3, 1), padding="same", padding_mode="circular"), (1, 3, 7, 7)),
])
def test_conv_round_trip(cls, plain, shape):
    layer = cls.from_module(plain, init=0.0)
    _randomise_logits(nn.ModuleDict({"l": layer}))
    x = torch.randn(shape)
    layer.mode = "none"
    torch.testing.assert_close(layer(x), plain(x))  # no mask: the plain layer exactly
    layer.mode = "hard"
    dense = layer.to_module()
    assert type(dense) is type(plain)
    torch.testing.assert_close(dense(x), layer(x))


def test_gpt2_conv1d_round_trip():
    Conv1D = optional_import("transformers.pytorch_utils", "Conv1D")

    plain = Conv1D(12, 8)
    nn.init.normal_(plain.bias)
    layer = MaskedGPT2Conv1D.from_module(plain, init=0.0)
    _randomise_logits(nn.ModuleDict({"l": layer}))
    x = torch.randn(2, 3, 8)
    layer.mode = "none"
    torch.testing.assert_close(layer(x), plain(x))
    layer.mode = None
    layer.eval()
    dense = layer.to_module()
    assert type(dense) is Conv1D
    torch.testing.assert_close(dense(x), layer(x))


def test_state_dict_keeps_beta_and_mode():
    a = MaskedLinear(4, 3, beta=12.5, mode="soft")
    b = MaskedLinear(4, 3)
    b.load_state_dict(a.state_dict())
    assert b.beta == 12.5 and b._mode == "soft"
    torch.testing.assert_close(b.logits, a.logits)


def _tiny_gpt2():
    GPT2Config, GPT2LMHeadModel = optional_import("transformers", "GPT2Config", "GPT2LMHeadModel")

    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                        n_inner=64)
    return GPT2LMHeadModel(config)


def _train_one_step(model, loss_fn):
    params = [p for p in model.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam(params, lr=1e-2)
    loss = loss_fn() + 1e-4 * l0_penalty(model)
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    return loss, changed


def test_gpt2_masked_discovery_step_changes_only_logits():
    model = _tiny_gpt2()
    layers = mask_model(model, include=["transformer.h.*.attn.*", "transformer.h.*.mlp.*"])
    assert len(layers) == 8  # c_attn, c_proj, c_fc, c_proj per block
    assert all(isinstance(m, MaskedGPT2Conv1D) for m in layers.values())
    set_beta(model, 5.0)
    _randomise_logits(model, 0.1)
    ids = torch.randint(0, 50, (3, 6))
    loss, changed = _train_one_step(model, lambda: model(ids, labels=ids).loss)
    assert torch.isfinite(loss)
    assert changed and all(n.endswith(".logits") for n in changed)
    model.eval()
    with torch.no_grad():
        masked_logits = model(ids).logits
        unmask_model(model)
        assert not masked_layers(model)
        torch.testing.assert_close(model(ids).logits, masked_logits)


@pytest.mark.parametrize("name,kwargs,shape,classifier", [
    ("resnet18", dict(num_classes=10), (2, 3, 32, 32), "fc"),
    ("vit_tiny_patch16_224", dict(num_classes=10, img_size=32, patch_size=8), (2, 3, 32, 32),
     "head"),
])
def test_timm_models_convert_and_train(name, kwargs, shape, classifier):
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False, **kwargs)
    layers = mask_model(model, exclude=classifier)  # the paper masks all but the classifier
    kinds = {type(m).__name__ for m in layers.values()}
    assert kinds <= {"MaskedLinear", "MaskedConv2d"} and len(layers) > 10
    _randomise_logits(model, 0.2)
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    loss, changed = _train_one_step(model, lambda: nn.functional.cross_entropy(model(x), y))
    assert torch.isfinite(loss) and all(n.endswith(".logits") for n in changed) and changed
    model.eval()
    with torch.no_grad():
        masked_out = model(x)
        unmask_model(model)
        torch.testing.assert_close(model(x), masked_out, rtol=1e-4, atol=1e-5)


def test_mask_model_errors_and_helpers():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="include pattern 'encoder.*' matches no maskable layer"):
        mask_model(model, include="encoder.*")
    with pytest.raises(ValueError, match="no masked layers"):
        set_beta(model, 2.0)
    layers = mask_model(model, exclude="2", freeze_base=False)
    assert list(layers) == ["0"] and model[2].weight.requires_grad
    set_beta(model, 9.0)
    set_mode(model, "hard")
    assert model[0].beta == 9.0 and model[0].mode == "hard"
    assert l0_penalty(model).item() == pytest.approx(model[0].l0_penalty().item())
    assert list(sf.masked_layers(model)) == ["0"]
    with pytest.raises(ValueError, match="beta must be a positive finite number"):
        set_beta(model, 0.0)


def test_unmask_model_gives_back_the_requires_grad_flags_masking_took():
    """mask_model freezes the base (only the logits train); unmasking brings the
    model back to what it was, trainable parameters included."""
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    model[1].bias.requires_grad_(False)  # frozen by the user: stays frozen
    sf.mask_model(model, include=["0"])
    assert not any(p.requires_grad for n, p in model.named_parameters() if "logits" not in n)
    sf.unmask_model(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags == {"0.weight": True, "0.bias": True, "1.weight": True, "1.bias": False,
                     "2.weight": True, "2.bias": True}
    assert isinstance(model[0], nn.Linear) and not isinstance(model[0], MaskedLinear)


def test_a_zero_size_layer_is_named_not_crashed_on():
    model = nn.Sequential(nn.Linear(0, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"\['0'\] have zero-size weights"):
        sf.mask_model(model)
    assert not isinstance(model[1], MaskedLinear)  # refused before anything was replaced
    sf.mask_model(model, exclude=["0"])
    assert model(torch.randn(3, 0)).shape == (3, 2)


def test_torch_jit_script_is_refused_with_what_to_do_instead():
    import warnings

    model = nn.Sequential(nn.Linear(4, 4))
    sf.mask_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        with pytest.raises(TypeError, match="MaskedLinear cannot be compiled by torch.jit.script"):
            torch.jit.script(model)
        sf.unmask_model(model)
        assert torch.jit.script(model)(torch.randn(2, 4)).shape == (2, 4)


def test_a_new_layer_type_registers_itself():
    """A masked class for a user's module type: one decorator, and mask_model,
    subnetwork_of and to_module work with it."""
    from subind_fast.nn import registry

    class Scale(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(n))

        def forward(self, x):
            return x * self.weight

    @sf.nn.masks(Scale)
    class MaskedScale(sf.nn.MaskedWeightMixin, Scale):
        _plain = Scale

        @classmethod
        def from_module(cls, module, init=-0.1, beta=1.0, mode=None, freeze_weight=True,
                        method=None):
            return cls._wrapping(module, init, beta, mode, freeze_weight, method)

        def forward(self, x):
            return x * self.masked_weight()

    try:
        model = torch.nn.Sequential(Scale(6))
        sf.mask_model(model, init=lambda s: s.copy_(torch.tensor([1., -1, 2, -2, 3, -3])))
        assert isinstance(model[0], MaskedScale)
        x = torch.randn(2, 6, dtype=torch.float64)
        model.double().eval()
        keep = torch.tensor([1., 0, 1, 0, 1, 0], dtype=torch.float64)
        torch.testing.assert_close(model(x), x * model[0].weight * keep)
        assert sf.nn.subnetwork_of(model).density() == 0.5
        plain = model[0].to_module()
        assert type(plain) is Scale and torch.equal(plain.weight, model[0].weight * keep)
    finally:
        registry._REGISTERED.pop(Scale, None)
    with pytest.raises(TypeError, match="not a masked layer"):
        sf.nn.masks(Scale)(Scale)


def test_shift_to_density_splits_logits_tied_at_the_cut():
    """Every logit at its start value: no constant separates them, so the
    tied ones are split as keep_exactly splits ties (earlier layer, earlier
    element first) and the hard masks keep the density."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    sf.mask_model(model)
    c = sf.nn.shift_to_density(model, 0.5)
    assert c == pytest.approx(sf.nn.DEFAULT_MASK_INIT)
    assert sf.nn.density(model) == pytest.approx(0.5)
    logits = torch.cat([layer.logits.reshape(-1) for layer in sf.masked_layers(model).values()])
    assert bool((logits[:12] > 0).all()) and bool((logits[12:] < 0).all())
    reference = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    sf.mask_model(reference)
    sf.nn.keep_exactly(reference, 0.5)
    assert sf.nn.subnetwork_of(model) == sf.nn.subnetwork_of(reference)


def test_mask_model_says_why_nothing_was_selected():
    with pytest.raises(ValueError, match="bare layer"):
        sf.mask_model(nn.Linear(3, 3))
    model = nn.Sequential(nn.Linear(3, 3))
    sf.mask_model(model)
    with pytest.raises(ValueError, match="already masked"):
        sf.mask_model(model)
    with pytest.raises(ValueError, match="holds no maskable layer"):
        sf.mask_model(nn.Sequential(nn.ReLU()))


@pytest.mark.parametrize("init", [torch.full((3, 3), float("nan")),
                                  lambda t: t.fill_(float("inf"))])
def test_non_finite_initial_logits_are_refused(init):
    with pytest.raises(ValueError, match="NaN or infinite mask logits"):
        sf.mask_model(nn.Sequential(nn.Linear(3, 3)), init=init)
