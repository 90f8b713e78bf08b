"""Mixed precision as ordinary layers have it: masked ops follow autocast like
F.linear / F.conv (compute in the autocast dtype, logits and mask math fp32),
eager and compiled agree, casting a masked model keeps its logits and β in
full precision, and bf16-weight models train their fp32 logits."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import subind_fast as sf
from oracle import assert_matches_oracle, effective_weight, optional_import

LOW = [torch.bfloat16, torch.float16]


def _small_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 6))
    layers = sf.mask_model(model)
    for layer in layers.values():
        nn.init.normal_(layer.logits, 0.0, 0.5)
    sf.set_beta(model, 2.0)
    return model


def _plain_twin(model):
    """The same network as plain layers whose weights are the soft W_eff (fp32)."""
    conv, lin = model[0], model[2]
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 5 * 5, 6))
    with torch.no_grad():
        for mine, theirs in ((conv, plain[0]), (lin, plain[2])):
            theirs.weight.copy_(effective_weight(mine.weight, mine.logits, 2.0, "soft"))
            theirs.bias.copy_(mine.bias)
    return plain


@pytest.mark.parametrize("dtype", LOW)
def test_autocast_computes_in_the_autocast_dtype_like_plain_layers(dtype):
    model, x = _small_model(), torch.randn(2, 3, 5, 5)
    plain = _plain_twin(model)
    with torch.autocast("cpu", dtype=dtype):
        out, want = model(x), plain(x)
    assert out.dtype == want.dtype == dtype
    assert_matches_oracle(out.float(), want.double(), None, dtype, "autocast output")
    out.float().square().sum().backward()
    for layer in sf.masked_layers(model).values():
        assert layer.logits.dtype == torch.float32 and layer.logits.grad.dtype == torch.float32
        assert torch.isfinite(layer.logits.grad).all() and layer.logits.grad.abs().sum() > 0


def test_autocast_leaves_float64_alone_as_aten_does():
    x, w, s = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), \
        torch.randn(5, 4, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sf.masked_linear(x, w, s, 1.0).dtype == F.linear(x, w).dtype == torch.float64


def test_custom_op_called_directly_follows_autocast():
    x, w, s = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.ops.subind.masked_linear(x, w, s, None, torch.tensor(1.0), "soft")
    assert y.dtype == torch.bfloat16


@pytest.mark.slow
def test_eager_and_compiled_agree_under_autocast():
    torch._dynamo.reset()
    model, x = _small_model(), torch.randn(2, 3, 5, 5)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager, traced = model(x), compiled(x)
    assert eager.dtype == traced.dtype == torch.bfloat16
    torch.testing.assert_close(traced, eager)


@pytest.mark.parametrize("cast", [lambda m: m.half(), lambda m: m.to(torch.bfloat16),
                                  lambda m: m.bfloat16()], ids=["half", "to_bf16", "bfloat16"])
def test_casting_a_masked_model_keeps_logits_and_beta_full_precision(cast):
    model = _small_model()
    before = {n: l.logits.detach().clone() for n, l in sf.masked_layers(model).items()}
    cast(model)
    for name, layer in sf.masked_layers(model).items():
        assert layer.weight.dtype in (torch.float16, torch.bfloat16)
        assert layer.logits.dtype == torch.float32 and layer.beta.dtype == torch.float32
        assert torch.equal(layer.logits, before[name])  # restored, not rounded through fp16
        assert float(layer.beta) == 2.0
    x = torch.randn(2, 3, 5, 5, dtype=model[0].weight.dtype)
    assert model(x).dtype == x.dtype


def test_double_casts_logits_and_beta_too():
    model = _small_model().double()
    for layer in sf.masked_layers(model).values():
        assert layer.logits.dtype == layer.beta.dtype == torch.float64


def test_bf16_weight_model_trains_its_fp32_logits():
    GPT2Config, GPT2LMHeadModel = optional_import("transformers", "GPT2Config", "GPT2LMHeadModel")

    torch.manual_seed(0)
    config = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=40, n_positions=8,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config).to(torch.bfloat16)
    layers = sf.mask_model(model, include=["transformer.h.*"])
    logits = [l.logits for l in layers.values()]
    assert all(s.dtype == torch.float32 and l.weight.dtype == torch.bfloat16
               for s, l in zip(logits, layers.values()))
    start = [s.detach().clone() for s in logits]
    opt = torch.optim.Adam(logits, lr=1e-2)
    ids = torch.randint(0, 40, (4, 6))
    for _ in range(3):
        loss = model(ids, labels=ids).loss.float() + 1e-4 * sf.l0_penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert all(not torch.equal(a, b) for a, b in zip(logits, start))
