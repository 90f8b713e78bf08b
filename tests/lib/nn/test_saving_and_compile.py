"""Masked models save and load like ordinary ones (β and the mode are a 0-d
buffer each): torch.save, safetensors, transformers save_pretrained — with
identical outputs; and annealing β under torch.compile(fullgraph=True)
compiles once."""
from pathlib import Path

import pytest
import torch
from torch import nn

import subind_fast as sf
from oracle import optional_import


def _gpt2(seed=0):
    GPT2Config, GPT2LMHeadModel = optional_import("transformers", "GPT2Config", "GPT2LMHeadModel")

    torch.manual_seed(seed)
    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=8,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def _masked_gpt2(seed=0, include=("transformer.h.*",)):
    model = _gpt2(seed)
    layers = sf.mask_model(model, include=list(include))
    for layer in layers.values():
        nn.init.normal_(layer.logits)
    sf.set_beta(model, 7.5)
    next(iter(layers.values())).mode = "soft"  # one pinned mode, the rest follow eval()
    return model.eval()


IDS = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))


def _assert_same_masks(a, b):
    la, lb = sf.masked_layers(a), sf.masked_layers(b)
    assert la.keys() == lb.keys()
    for name in la:
        assert torch.equal(la[name].logits, lb[name].logits)
        assert float(la[name].beta) == float(lb[name].beta)
        assert la[name]._mode == lb[name]._mode


def test_beta_and_mode_are_buffers_in_the_state_dict():
    layer = sf.nn.MaskedLinear(4, 3, beta=2.5, mode="hard")
    state = layer.state_dict()
    assert set(state) == {"weight", "bias", "logits", "beta", "mask_mode", "mask_method_name"}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert state["beta"].shape == () and float(state["beta"]) == 2.5
    fresh = sf.nn.MaskedLinear(4, 3)
    fresh.load_state_dict(state)
    assert float(fresh.beta) == 2.5 and fresh.mode == "hard"


def test_the_saved_method_is_its_name():
    layer = sf.nn.MaskedLinear(4, 3, method=sf.nn.MaskMethod("gumbel", "neuron", n_samples=2))
    saved = layer.state_dict()["mask_method_name"]
    assert saved.dtype == torch.uint8 and bytes(saved.tolist()) == b"gumbel neuron 2"
    other = sf.nn.MaskedLinear(4, 3, method="hard_concrete")
    with pytest.raises(ValueError, match="saved with mask method .*'gumbel'"):
        other.load_state_dict(layer.state_dict())
    bad = {**layer.state_dict(), "mask_method_name": torch.tensor(list(b"nosuch weight 1"),
                                                              dtype=torch.uint8)}
    with pytest.raises(ValueError, match="mask_method_name does not name a mask method"):
        layer.load_state_dict(bad)


def test_a_file_written_by_main_1ff13e0_still_loads():
    """tests/lib/nn/data/masked_1ff13e0*.safetensors: a hard-concrete,
    neuron-level model (Linear 6→4, ReLU, Linear 4→3) saved by main 1ff13e0,
    which named the method by positions (mask_method_code), and its eval
    output on a fixed input."""
    from safetensors.torch import load_file

    data = Path(__file__).parent / "data"
    state = load_file(str(data / "masked_1ff13e0.safetensors"))
    io = load_file(str(data / "masked_1ff13e0_io.safetensors"))
    assert "0.mask_method_code" in state and "0.mask_method_name" not in state
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    sf.mask_model(model, method="hard_concrete", granularity="neuron")
    model.load_state_dict(state)
    torch.testing.assert_close(model.eval()(io["x"]), io["y"])
    assert bytes(model.state_dict()["0.mask_method_name"].tolist()) == b"hard_concrete neuron 1"
    wrong = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    sf.mask_model(wrong)  # continuous, weight-level: the old code names another method
    with pytest.raises(ValueError, match="saved with mask method .*'hard_concrete'"):
        wrong.load_state_dict(state, strict=False)


def test_beta_assignment_writes_the_buffer_in_place():
    layer = sf.nn.MaskedLinear(4, 3)
    buffer = layer.beta
    layer.beta = 12.0
    assert layer.beta is buffer and float(buffer) == 12.0
    with pytest.raises(ValueError, match="beta must be a positive finite number"):
        layer.beta = -1.0


def test_torch_save_state_dict_round_trip(tmp_path):
    model = _masked_gpt2()
    torch.save(model.state_dict(), tmp_path / "state.pt")
    fresh = _gpt2(seed=1)
    sf.mask_model(fresh, include=["transformer.h.*"])
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
    fresh.eval()
    _assert_same_masks(model, fresh)
    torch.testing.assert_close(fresh(IDS).logits, model(IDS).logits, rtol=0, atol=0)


def test_torch_save_whole_model_with_a_linear_subclass(tmp_path):
    TimmLinear = optional_import("timm.layers", "Linear")

    model = nn.Sequential(TimmLinear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    sf.mask_model(model)
    nn.init.normal_(model[0].logits)
    assert isinstance(model[0], TimmLinear) and isinstance(model[0], sf.nn.MaskedLinear)
    x = torch.randn(3, 5)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert isinstance(loaded[0], TimmLinear) and isinstance(loaded[0], sf.nn.MaskedLinear)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_safetensors_save_model_round_trip_with_tied_weights(tmp_path):
    from safetensors.torch import load_model, save_model

    model = _masked_gpt2(include=("transformer.h.*", "lm_head"))  # lm_head is tied to wte
    save_model(model, str(tmp_path / "m.safetensors"))
    fresh = _gpt2(seed=3)
    sf.mask_model(fresh, include=["transformer.h.*", "lm_head"])
    load_model(fresh, str(tmp_path / "m.safetensors"))
    fresh.eval()
    _assert_same_masks(model, fresh)
    torch.testing.assert_close(fresh(IDS).logits, model(IDS).logits, rtol=0, atol=0)


def test_transformers_save_pretrained_and_masked_from_pretrained(tmp_path):
    GPT2LMHeadModel = optional_import("transformers", "GPT2LMHeadModel")

    model = _masked_gpt2()
    model.save_pretrained(tmp_path)
    loaded = sf.nn.masked_from_pretrained(GPT2LMHeadModel, tmp_path).eval()
    _assert_same_masks(model, loaded)
    torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, rtol=0, atol=0)
    assert all(not p.requires_grad for n, p in loaded.named_parameters() if "logits" not in n)


@pytest.mark.parametrize("method", [sf.nn.MaskMethod("hard_concrete"),
                                    sf.nn.MaskMethod("gumbel", "neuron", n_samples=2)])
def test_saving_and_reloading_keeps_the_mask_method(tmp_path, method):
    GPT2LMHeadModel = optional_import("transformers", "GPT2LMHeadModel")

    model = _gpt2()
    sf.mask_model(model, include=["transformer.h.*"], method=method)
    model.save_pretrained(tmp_path)
    loaded = sf.nn.masked_from_pretrained(GPT2LMHeadModel, tmp_path)
    layers = sf.masked_layers(loaded).values()
    assert {(layer.mask_method.name, layer.mask_method.granularity,
             layer.mask_method.n_samples) for layer in layers} == {
        (method.name, method.granularity, method.n_samples)}
    _assert_same_masks(model, loaded)
    continuous = _gpt2()
    sf.mask_model(continuous, include=["transformer.h.*"])
    with pytest.raises(ValueError, match="saved with mask method"):
        continuous.load_state_dict(model.state_dict())


def test_masked_from_pretrained_refuses_an_unmasked_checkpoint(tmp_path):
    GPT2LMHeadModel = optional_import("transformers", "GPT2LMHeadModel")

    _gpt2().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds no masked layers"):
        sf.nn.masked_from_pretrained(GPT2LMHeadModel, tmp_path)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        sf.nn.masked_from_pretrained(GPT2LMHeadModel, tmp_path / "missing")


@pytest.mark.slow
def test_annealing_beta_under_fullgraph_compile_compiles_once():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    sf.mask_model(model)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    x = torch.randn(2, 3, 6)
    outputs = []
    for step in range(10):
        sf.set_beta(model, 100 ** (step / 9))  # the paper's schedule, 1 → 100
        out = compiled(x)
        out.sum().backward()
        outputs.append(out.detach())
    assert counter.frame_count == 1
    assert not torch.allclose(outputs[0], outputs[-1])  # β really changed the computation
