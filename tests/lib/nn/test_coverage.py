"""Nothing is left unmasked silently: nn.MultiheadAttention and nn.Linear
subclasses are masked, modules that bypass a masked layer are fixed where
known (timm EVA/BEiT/SwinV2 attention, nn.TransformerEncoderLayer) or detected
at the first forward, and mask_model reports what it masked and left."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import subind_fast as sf
from oracle import effective_weight, optional_import


def _randomise(model):
    for layer in sf.masked_layers(model).values():
        for _, logits in layer.masked_parameters().values():
            nn.init.normal_(logits, 0.0, 1.0)


def _encoder():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)


def test_transformer_encoder_is_fully_masked_and_matches_its_unmasked_twin():
    model = _encoder()
    report = sf.mask_model(model)
    _randomise(model)
    sub = sf.nn.subnetwork_of(model)
    matrices = {n for n, p in model.named_parameters() if p.dim() == 2 and "logits" not in n}
    assert set(sub.names()) == matrices  # in_proj, out_proj, linear1, linear2 of each layer
    assert report.masked["MaskedMultiheadAttention"] == 2
    x = torch.randn(3, 5, 16)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    for train in (True, False):  # eval + no_grad would take PyTorch's weight-reading fast path
        model.train(train)
        twin = sf.unmask_model(__import__("copy").deepcopy(model)).train(train)
        if not train:
            sf.set_mode(model, "hard")
        with torch.set_grad_enabled(train):
            got = model(x, src_key_padding_mask=padding)
            want = twin(x, src_key_padding_mask=padding) if not train else None
        if train:
            got.square().sum().backward()
            for name, layer in sf.masked_layers(model).items():
                for _, logits in layer.masked_parameters().values():
                    assert logits.grad is not None and logits.grad.abs().sum() > 0, name
        else:
            torch.testing.assert_close(got.nan_to_num(), want.nan_to_num())
    assert any("fast path off" in f for f in report.fixes)
    assert any("use_nested_tensor=False" in f for f in report.fixes)


@pytest.mark.parametrize("batch_first", [False, True])
def test_multihead_attention_with_separate_kv_dims_matches_the_composite(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(12, 3, kdim=8, vdim=6, batch_first=batch_first)
    plain = __import__("copy").deepcopy(mha)
    layer = sf.nn.MaskedMultiheadAttention.from_module(mha, beta=2.0)
    _randomise(nn.ModuleList([layer]))
    with torch.no_grad():
        for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            getattr(plain, name).copy_(effective_weight(getattr(layer, name),
                                                        getattr(layer, name.replace("weight", "logits")),
                                                        2.0, "soft"))
        plain.out_proj.weight.copy_(effective_weight(layer.out_proj.weight, layer.out_proj.logits,
                                                     2.0, "soft"))
    shape = (2, 4) if batch_first else (4, 2)
    q, k, v = torch.randn(*shape, 12), torch.randn(*shape, 8), torch.randn(*shape, 6)
    got, got_w = layer(q, k, v)
    want, want_w = plain(q, k, v)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_w, want_w)


def test_linear_subclasses_are_masked_and_keep_their_type():
    timm = pytest.importorskip("timm")
    TimmLinear = optional_import("timm.layers", "Linear")

    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=7)
    assert type(model.classifier) is TimmLinear
    sf.mask_model(model)
    assert isinstance(model.classifier, sf.nn.MaskedLinear)
    assert isinstance(model.classifier, TimmLinear)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.classifier.logits.grad is not None
    plain = model.classifier.to_module()
    assert type(plain) is TimmLinear and not hasattr(plain, "logits")


class _Twice(nn.Linear):
    """A subclass whose own forward reaches the mask through super()."""

    def forward(self, x):
        return 2 * super().forward(x)


class _Bypass(nn.Linear):
    """A subclass whose forward computes with .weight directly."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class _ReadsChildWeight(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        return self.out(F.linear(x, self.proj.weight))


def test_subclass_forward_that_calls_super_runs_the_mask():
    model = nn.Sequential(_Twice(4, 3))
    sf.mask_model(model)
    sf.set_mode(model, "none")
    x = torch.randn(2, 4)
    torch.testing.assert_close(model(x), 2 * F.linear(x, model[0].weight, model[0].bias))


@pytest.mark.parametrize("model, bypassed", [(lambda: nn.Sequential(_Bypass(4, 3)), "0 "),
                                             (_ReadsChildWeight, "proj ")])
def test_a_bypassed_masked_layer_is_named_at_the_first_forward(model, bypassed):
    model = model()
    sf.mask_model(model)
    with pytest.raises(sf.nn.MaskCoverageError, match=bypassed):
        model(torch.randn(2, 4))
    model(torch.randn(2, 4))  # "first": only the first forward is checked
    quiet = _ReadsChildWeight()
    sf.mask_model(quiet, check_coverage="off")
    quiet(torch.randn(2, 4))


def test_always_policy_checks_every_forward():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x, use_b=True):
            return self.b(self.a(x)) if use_b else self.a(x)

    model = Branchy()
    sf.mask_model(model, check_coverage="always")
    model(torch.randn(1, 3))
    with pytest.raises(sf.nn.MaskCoverageError, match=r"\['b \(MaskedLinear\)'\]"):
        model(torch.randn(1, 3), use_b=False)


@pytest.mark.parametrize("name, kwargs, size", [
    ("eva02_tiny_patch14_224", dict(img_size=28, depth=1, embed_dim=32, num_heads=2), 28),
    ("beit_base_patch16_224", dict(img_size=32, depth=1, embed_dim=32, num_heads=2), 32),
    ("swinv2_tiny_window8_256", dict(img_size=32, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                                     window_size=4), 32),
])
def test_timm_attention_that_reads_qkv_weight_is_fixed_without_changing_its_output(name, kwargs,
                                                                                   size):
    timm = pytest.importorskip("timm")

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=4, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        before = model(x)
    report = sf.mask_model(model)
    assert any("qkv_bias_separate=True" in f for f in report.fixes)
    sf.set_mode(model, "none")  # m = 1: the masked model must compute what the original did
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    sf.set_mode(model, "soft")
    model(x).sum().backward()
    assert all(l.logits.grad is not None for l in sf.masked_layers(model).values())


def test_a_module_registered_under_two_names_is_masked_once():
    shared = nn.Linear(4, 4)
    model = nn.Module()
    model.first, model.second = shared, shared
    report = sf.mask_model(model)
    assert len(report) == 1 and model.first is model.second
    assert isinstance(model.first, sf.nn.MaskedLinear)
    assert report.masked == {"MaskedLinear": 1}


def test_report_counts_masked_and_left_modules_by_type():
    model = _encoder()
    report = sf.mask_model(model, exclude=["layers.1.linear2"])
    text = str(report)
    assert report.masked["MaskedLinear"] == 3 and report.masked["MaskedMultiheadAttention"] == 2
    assert report.masked["MaskedNonDynamicallyQuantizableLinear"] == 2
    assert report.left[("LayerNorm", "not a maskable type")] == 4
    assert report.left[("Linear", "not selected")] == 1
    assert len(report.left) == 2  # the replaced originals are not in the model any more
    assert "LayerNorm ×4 (not a maskable type, 128 parameters)" in text
    assert "Linear ×1 (not selected, 528 parameters)" in text


def test_unmaskable_matrix_weights_are_warned_about():
    class Raw(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 4))

        def forward(self, x):
            return x @ self.weight

    model = nn.Sequential(nn.Linear(4, 4), Raw(), nn.ConvTranspose1d(4, 4, 1), nn.LayerNorm(4))
    with pytest.warns(UserWarning, match=r"\['ConvTranspose1d', 'Raw'\]"):
        sf.mask_model(model, check_coverage="off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # naming the layers to mask is a deliberate choice
        sf.mask_model(nn.Sequential(nn.Linear(4, 4), Raw()), include=["0"])


@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (1, 2)])
def test_timm_tf_same_padding_conv_is_masked_after_its_padding(stride, dilation):
    Conv2dSame, conv2d_same = optional_import("timm.layers.conv2d_same", "Conv2dSame",
                                              "conv2d_same")

    torch.manual_seed(0)
    model = nn.Sequential(Conv2dSame(3, 5, 3, stride=stride, dilation=dilation, groups=1))
    plain = model[0]
    sf.mask_model(model)
    assert isinstance(model[0], Conv2dSame)
    _randomise(model)
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    model.double()
    layer = model[0]
    (_, logits), = layer.masked_parameters().values()
    for mode in ("soft", "hard"):
        sf.set_mode(model, mode)
        expected = conv2d_same(x, effective_weight(layer.weight, logits.double(), layer.beta,
                                                   mode), layer.bias, plain.stride, 0,
                               plain.dilation, 1)
        torch.testing.assert_close(model(x), expected)
