"""Head- and channel-level masks (granularity "head"; a convolution's output
channels at "neuron"): one logit per attention head of GPT-2's c_attn/c_proj,
timm's qkv/proj, nn.MultiheadAttention (packed and separate projections) and
LLaMA-style q/k/v/o under grouped-query attention (Llama, Qwen2, Mistral,
Gemma-2; Phi-3's packed qkv too),
checked against the float64 oracle: the plain model with every masked weight
replaced by θ ⊙ (m ⊗ 1), the unit mask m = σ(βs) or 1[s > 0] spread over its
run of rows or columns by a Kronecker product — output and the gradient of
every logit.  Then the Subnetwork stores and expands them, installs them
again, and transfer and head analysis take them."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import subind_fast as sf
from subind_fast import analysis as A

from oracle import mask_of

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

BETA = 1.7


def _gpt2():
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40, n_positions=16)
    return transformers.GPT2LMHeadModel(config), torch.randint(0, 40, (2, 7))


def _llama():
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(config), torch.randint(0, 40, (2, 7))


def _family(config_name, model_name, **extra):
    def build():
        config = getattr(transformers, config_name)(
            vocab_size=40, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, **extra)
        return getattr(transformers, model_name)(config), torch.randint(0, 40, (2, 7))
    return build


def _phi3():
    config = transformers.Phi3Config(vocab_size=40, hidden_size=32, intermediate_size=48,
                                     num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=32,
                                     pad_token_id=0, eos_token_id=1, bos_token_id=1)
    return transformers.Phi3ForCausalLM(config), torch.randint(0, 40, (2, 7))


def _vit():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                              patch_size=8, depth=1, num_classes=5)
    return model, torch.randn(2, 3, 32, 32)


class _MHA(nn.Module):
    def __init__(self, separate: bool):
        super().__init__()
        kdim = 12 if separate else None
        self.attn = nn.MultiheadAttention(16, 4, kdim=kdim, vdim=kdim, batch_first=True)
        self.separate = separate

    def forward(self, x):
        kv = x[..., :12] if self.separate else x
        return self.attn(x, kv, kv, need_weights=False)[0]


MODELS = {"gpt2": _gpt2, "llama_gqa": _llama, "phi3": _phi3, "timm_vit": _vit,
          "qwen2_gqa": _family("Qwen2Config", "Qwen2ForCausalLM"),
          "mistral_gqa": _family("MistralConfig", "MistralForCausalLM"),
          "gemma2_gqa": _family("Gemma2Config", "Gemma2ForCausalLM", head_dim=8),
          "mha_packed": lambda: (_MHA(False), torch.randn(2, 5, 16)),
          "mha_separate": lambda: (_MHA(True), torch.randn(2, 5, 16))}
# logits shape per masked weight, by a name suffix: heads where the model has them
EXPECTED_UNITS = {
    "gpt2": {"attn.c_attn.weight": (1, 12), "attn.c_proj.weight": (4, 1),
             "mlp.c_fc.weight": (1, 128)},
    "llama_gqa": {"q_proj.weight": (4, 1), "k_proj.weight": (2, 1), "v_proj.weight": (2, 1),
                  "o_proj.weight": (1, 4), "gate_proj.weight": (48, 1)},
    "phi3": {"qkv_proj.weight": (8, 1), "o_proj.weight": (1, 4)},
    **{family: {"q_proj.weight": (4, 1), "k_proj.weight": (2, 1), "v_proj.weight": (2, 1),
                "o_proj.weight": (1, 4)} for family in ("qwen2_gqa", "mistral_gqa", "gemma2_gqa")},
    "timm_vit": {"attn.qkv.weight": (9, 1), "attn.proj.weight": (1, 3), "fc1.weight": (768, 1)},
    "mha_packed": {"in_proj_weight": (12, 1), "out_proj.weight": (1, 4)},
    "mha_separate": {"q_proj_weight": (4, 1), "k_proj_weight": (4, 1), "out_proj.weight": (1, 4)},
}


def _output(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def _masked(name, mode):
    torch.manual_seed(0)
    plain, x = MODELS[name]()
    plain = plain.double().eval()
    masked = copy.deepcopy(plain)
    sf.mask_model(masked, granularity="head", init=lambda s: s.normal_(), beta=BETA, mode=mode)
    masked.double()  # the logits too: the whole comparison in float64
    return plain, masked, x if x.dtype == torch.long else x.double()


def _oracle_weights(masked, mode):
    """{weight name: θ ⊙ (m ⊗ 1)} built from leaf copies of the logits, and the leaves."""
    weights, leaves = {}, {}
    for layer_name, layer in sf.nn.masked_layers(masked).items():
        for attribute, (weight, logits) in layer.masked_parameters().items():
            leaf = logits.detach().clone().requires_grad_(True)
            run = torch.ones([w // u for w, u in zip(weight.shape, logits.shape)], dtype=leaf.dtype)
            prefix = f"{layer_name}." if layer_name else ""
            beta = float(layer.beta)  # β as the layer holds it (set in fp32)
            weights[prefix + attribute] = weight.detach() * torch.kron(mask_of(leaf, beta, mode), run)
            leaves[prefix + attribute] = (leaf, logits)
    return weights, leaves


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("name", list(MODELS))
def test_head_masks_equal_the_float64_oracle(name, mode):
    plain, masked, x = _masked(name, mode)
    shapes = {n: tuple(s.shape) for n, (_, s) in _oracle_weights(masked, mode)[1].items()}
    for suffix, shape in EXPECTED_UNITS[name].items():
        found = [n for n in shapes if n.endswith(suffix)]
        assert found and all(shapes[n] == shape for n in found), (suffix, shapes)
    weights, leaves = _oracle_weights(masked, mode)
    expected = _output_of(plain, weights, x)
    ours = _output(masked, x)
    # Gemma-2 computes its norms and embedding scale in float32 whatever the model's dtype
    tolerance = 1e-6 if name.startswith("gemma2") else 1e-10
    torch.testing.assert_close(ours, expected, rtol=tolerance, atol=tolerance)
    if mode == "soft":
        upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(1),
                               dtype=ours.dtype)
        (ours * upstream).sum().backward()
        (expected * upstream).sum().backward()
        for weight_name, (leaf, logits) in leaves.items():
            torch.testing.assert_close(logits.grad, leaf.grad, rtol=max(1e-9, tolerance),
                                       atol=max(1e-12, tolerance),
                                       msg=lambda m: f"{weight_name}: {m}")


def _output_of(plain, weights, x):
    """The plain model run with the oracle's weights in place of its own."""
    return _output_functional(plain, weights, x)


def _output_functional(model, weights, x):
    out = functional_call(model, weights, (x,), strict=False, tie_weights=False)
    return out.logits if hasattr(out, "logits") else out


def test_channel_masks_of_a_convolution_equal_the_oracle():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 6, 3, padding=1).double()
    layer = sf.nn.MaskedConv2d.from_module(copy.deepcopy(conv), init=lambda s: s.normal_(),
                                           beta=BETA, mode="soft", method="continuous")
    channels = sf.nn.MaskedConv2d.from_module(copy.deepcopy(conv), beta=BETA, mode="soft",
                                              method=sf.nn.MaskMethod("continuous", "neuron"),
                                              init=lambda s: s.normal_()).double()
    assert channels.logits.shape == (6, 1, 1, 1) and layer.logits.shape == conv.weight.shape
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    leaf = channels.logits.detach().clone().requires_grad_(True)
    expected = F.conv2d(x, conv.weight * torch.kron(mask_of(leaf, float(channels.beta), "soft"),
                                                    torch.ones(1, 3, 3, 3, dtype=torch.float64)),
                        conv.bias, padding=1)
    ours = channels(x)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)
    ours.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(channels.logits.grad, leaf.grad, rtol=1e-9, atol=1e-12)


def test_head_subnetwork_stores_expands_and_installs_again(tmp_path):
    plain, masked, x = _masked("llama_gqa", "hard")
    sub = sf.nn.subnetwork_of(masked)
    assert sub.metadata["granularity"] == "head"
    k_name = next(n for n in sub.names() if n.endswith("k_proj.weight"))
    layer_k = next(layer for name, layer in sf.nn.masked_layers(masked).items()
                   if name.endswith("k_proj"))
    assert torch.equal(sub.unit_mask(k_name), layer_k.logits.detach() > 0)
    assert sub.mask(k_name).shape == layer_k.weight.shape  # 1 bit per weight, expanded
    loaded = sf.Subnetwork.load(sub.save(tmp_path / "heads.safetensors"))
    assert loaded == sub and loaded.unit_shape(k_name) == (2, 1)
    rebuilt = sf.Subnetwork.from_unit_masks({n: loaded.unit_mask(n) for n in loaded.names()},
                                            {n: loaded.shape(n) for n in loaded.names()})
    assert rebuilt == sub

    again = copy.deepcopy(plain)
    sf.mask_model(again, granularity="head", subnetwork=loaded)
    torch.testing.assert_close(_output(again, x), _output(masked, x), rtol=0, atol=0)
    baked = sf.unmask_model(again)  # θ ⊙ 1[s > 0] with each head's bit spread over its run
    torch.testing.assert_close(_output(baked, x), _output(masked, x), rtol=1e-12, atol=1e-12)

    partial = sf.Subnetwork.from_masks({**sub.masks(), k_name: torch.ones_like(sub.mask(k_name))
                                        .index_fill_(1, torch.tensor([0]), False)})
    with pytest.raises(ValueError, match=f"{k_name}.*kept only in part"):
        sf.mask_model(copy.deepcopy(plain), granularity="head", subnetwork=partial)


def test_transfer_and_head_analysis_take_head_subnetworks():
    plain, masked, x = _masked("gpt2", "hard")
    sub = sf.nn.subnetwork_of(masked)
    torch.manual_seed(5)
    target = transformers.GPT2LMHeadModel(plain.config).double()
    sf.transfer(sub, plain, target)
    table = dict(target.named_parameters())
    for name in sub.names():
        kept = sub.mask(name)
        source = dict(plain.named_parameters())[name]
        assert torch.equal(table[name][kept], source[kept])
    heads = A.attention_heads(plain)
    per_head = A.head_overlap(sub, sub, heads)
    # every projection of a head is kept or dropped whole: counts are sums of whole runs
    c_proj = next(n for n in sub.names() if n.endswith("h.0.attn.c_proj.weight"))
    kept_heads = sub.unit_mask(c_proj).reshape(-1)
    run = 32 // 4 * 32
    for head in range(4):
        assert per_head[("transformer.h.0.attn", head)].a % run == 0
    assert int(kept_heads.sum()) * run == sub.counts()[c_proj][0]


def test_head_granularity_elsewhere_masks_output_units():
    layer = sf.nn.MaskedLinear(8, 6, method=sf.nn.MaskMethod("continuous", "head"))
    assert layer.logits.shape == (6, 1)  # no heads to find: one logit per output unit
