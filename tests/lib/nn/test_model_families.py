"""The model families people study now (transformers Llama, Qwen2, Mistral,
Gemma-2, Phi-3), built from tiny configs with grouped-query attention:
mask_model masks every projection (q/k/v/o or Phi-3's fused qkv, gate/up/down)
and names what it leaves; the hard-masked model equals the plain model with
θ ⊙ 1[s > 0] (float64); a discovery step moves only the logits; a transfer and
a save/reload round trip keep the subnetwork."""
import pytest
import torch

import subind_fast as sf

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0, "eos_token_id": 1,
                                               "bos_token_id": 1}),
}
PROJECTIONS = {"phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")}
# Gemma-2 computes its norms and embedding scale in float32 whatever the model's dtype.
TOLERANCE = {"gemma2": 1e-6}
DEFAULT_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj")


def _model(family, seed=0):
    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**COMMON, **extra)
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).double().eval()


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param


IDS = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))


def test_every_projection_is_masked_and_the_rest_named(family):
    model = _model(family)
    report = sf.mask_model(model)
    names = set(sf.masked_layers(model))
    for layer in range(2):
        for projection in PROJECTIONS.get(family, DEFAULT_PROJECTIONS):
            assert any(n.endswith(f"layers.{layer}.self_attn.{projection}")
                       or n.endswith(f"layers.{layer}.mlp.{projection}") for n in names), (
                family, projection)
    assert "lm_head" in names
    assert "left unmasked" in report.summary() and "RMSNorm" in report.summary()


def test_the_hard_masked_model_is_the_plain_model_with_masked_weights(family):
    plain, masked = _model(family), _model(family)
    sf.mask_model(masked, init=lambda s: s.normal_())
    masked.eval()
    # A tied output projection (Gemma-2's lm_head is the embedding) is masked where it
    # projects, not where it embeds: the reference unties it.
    plain.lm_head.weight = torch.nn.Parameter(plain.lm_head.weight.detach().clone())
    with torch.no_grad():
        for name, layer in sf.masked_layers(masked).items():
            target = plain.get_submodule(name)
            target.weight.mul_(layer.hard_mask().to(target.weight.dtype))
    tol = TOLERANCE.get(family, 1e-10)
    torch.testing.assert_close(masked(IDS).logits, plain(IDS).logits, rtol=tol, atol=tol)


def test_discovery_step_transfer_and_save_reload(family, tmp_path):
    model = _model(family)
    sf.mask_model(model, init=0.5)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logits = [p for p in model.parameters() if p.requires_grad]
    opt = sf.MaskedAdamW(logits, lr=0.1)
    loss = model(IDS, labels=IDS).loss + 1e-3 * sf.l0_penalty(model)
    loss.backward()
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.endswith("logits") for n in moved)  # only the masks learn

    model.save_pretrained(tmp_path / "saved")
    loaded = sf.nn.masked_from_pretrained(type(model), tmp_path / "saved",
                                          torch_dtype=torch.float64)
    model.eval(), loaded.eval()
    assert sf.nn.subnetwork_of(loaded) == sf.nn.subnetwork_of(model)
    tol = TOLERANCE.get(family, 0)
    torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, rtol=tol, atol=tol)

    sub = sf.Subnetwork.from_masks({n: torch.rand(s.shape, generator=torch.Generator()
                                                  .manual_seed(1)) < 0.3
                                    for n, s in _model(family).named_parameters()
                                    if n.endswith("proj.weight")})
    source, fresh = _model(family), _model(family, seed=5)
    frozen = sf.transfer(sub, source, fresh)
    for name, mask in sub.masks().items():
        got, want = fresh.get_parameter(name), source.get_parameter(name)
        assert torch.equal(got[mask], want[mask])
    assert frozen
