"""One name per parameter: tied parameters are one subnetwork entry (transfer
handles them), and wrapper prefixes (torch.compile's ``_orig_mod.``,
DataParallel/DDP's ``module.``) never reach a subnetwork."""
import pytest
import torch
from torch import nn

import subind_fast as sf
from subind_fast.naming import parameter_names, strip_wrappers
from oracle import optional_import


def _gpt2(seed):
    GPT2Config, GPT2LMHeadModel = optional_import("transformers", "GPT2Config", "GPT2LMHeadModel")

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=40,
                                      n_positions=8, bos_token_id=0, eos_token_id=0))


def _discover_all(model):
    probe = __import__("copy").deepcopy(model)
    sf.mask_model(probe)  # every maskable layer, lm_head (tied to wte) included
    for layer in sf.masked_layers(probe).values():
        nn.init.normal_(layer.logits)
    return probe


def test_tied_lm_head_is_one_entry_and_transfers():
    source, target = _gpt2(0), _gpt2(1)
    sub = sf.nn.subnetwork_of(_discover_all(source))
    assert "transformer.wte.weight" in sub and "lm_head.weight" not in sub
    frozen = sf.transfer(sub, source, target, reinit="all")
    gamma = sub.mask("transformer.wte.weight")
    wte = target.transformer.wte.weight
    assert target.lm_head.weight is wte  # still tied after transfer
    assert torch.equal(wte[gamma], source.transformer.wte.weight[gamma])
    assert not torch.equal(wte[~gamma], source.transformer.wte.weight[~gamma])
    assert wte in frozen


def test_alias_names_resolve_to_the_canonical_parameter():
    model = _gpt2(0)
    table = parameter_names(model)
    assert table.resolve("lm_head.weight") == "transformer.wte.weight"
    legacy = sf.Subnetwork.from_masks({"lm_head.weight": torch.ones(40, 32, dtype=torch.bool)})
    assert legacy.matching_parameters(model)["lm_head.weight"] is model.transformer.wte.weight


def test_compiled_and_data_parallel_wrappers_are_stripped():
    source, target = _gpt2(0), _gpt2(1)
    probe = _discover_all(source)
    plain = sf.nn.subnetwork_of(probe)
    for wrapped in (torch.compile(probe), nn.DataParallel(probe)):
        sub = sf.nn.subnetwork_of(wrapped)
        assert sub == plain and not any("_orig_mod" in n or n.startswith("module.")
                                        for n in sub.names())
    sf.transfer(plain, torch.compile(source), nn.DataParallel(target))  # wrapped both sides


def test_nested_wrapper_segments_are_stripped():
    inner = nn.Sequential(nn.Linear(3, 3))
    model = nn.Sequential(torch.compile(inner))
    names = [strip_wrappers(n, model) for n, _ in model.named_parameters()]
    assert names == ["0.0.weight", "0.0.bias"]
    assert strip_wrappers("module.encoder.module.weight") == "encoder.module.weight"


def test_a_weight_masked_by_two_layers_gets_the_union():
    a = nn.Linear(4, 4)
    b = nn.Linear(4, 4)
    b.weight = a.weight  # tied, two modules
    model = nn.Sequential(a, b)
    sf.mask_model(model)
    ma = torch.rand(4, 4) > 0.5
    mb = torch.rand(4, 4) > 0.5
    with torch.no_grad():
        model[0].logits.copy_(torch.where(ma, 1.0, -1.0))
        model[1].logits.copy_(torch.where(mb, 1.0, -1.0))
    sub = sf.nn.subnetwork_of(model)
    assert set(sub.names()) == {"0.weight"}
    assert torch.equal(sub.mask("0.weight"), ma | mb)


def test_unknown_names_are_a_clear_error():
    with pytest.raises(ValueError, match=r"no parameters named \['nope.weight'\]"):
        sf.Subnetwork.all_of(_gpt2(0), names=["nope.weight"])
