"""transfer(): both re-initialisation policies, the frozen set, the controls."""
import pytest
import torch
from torch import nn

from subind_fast import FrozenMasks, Subnetwork, transfer


def _model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))


def _subnetwork(model):
    gen = torch.Generator().manual_seed(9)
    return Subnetwork.from_masks({"0.weight": torch.rand(6, 5, generator=gen) < 0.3,
                                  "2.weight": torch.rand(2, 6, generator=gen) < 0.3})


def _prepared():
    source, target = _model(1), _model(2)
    source[1].running_mean.fill_(3.0)
    fresh = {n: p.detach().clone() for n, p in target.named_parameters()}
    return source, target, fresh, _subnetwork(source)


def _check_transferred(sub, source, target, fresh, uncovered_from):
    """Subnetwork entries from the source, the rest of covered parameters
    fresh, uncovered parameters from ``uncovered_from``."""
    src = dict(source.named_parameters())
    for name, p in target.named_parameters():
        if name in sub:
            gamma = sub.mask(name)
            assert torch.equal(p[gamma], src[name][gamma])
            assert torch.equal(p[~gamma], fresh[name][~gamma])
        else:
            assert torch.equal(p, uncovered_from[name]), name


def test_reinit_all_copies_only_the_subnetwork():
    source, target, fresh, sub = _prepared()
    frozen = transfer(sub, source, target, reinit="all")
    _check_transferred(sub, source, target, fresh, fresh)  # biases, norms: fresh
    assert torch.all(target[1].running_mean == 0)
    assert isinstance(frozen, FrozenMasks) and len(frozen) == 2
    assert torch.equal(frozen[target[0].weight], sub.packed("0.weight"))
    assert frozen.name_of(target[0].weight) == "0.weight"


def test_reinit_masked_inherits_everything_the_subnetwork_does_not_cover():
    source, target, fresh, sub = _prepared()
    transfer(sub, source, target, reinit="masked")
    _check_transferred(sub, source, target, fresh, dict(source.named_parameters()))
    assert torch.all(target[1].running_mean == 3.0)


def test_controls_are_one_liners():
    source, target, fresh, sub = _prepared()
    assert len(transfer(Subnetwork.all_of(source), source, target, freeze=False)) == 0
    for (name, p), q in zip(target.named_parameters(), source.parameters()):
        assert torch.equal(p, q), name
    source, target, fresh, sub = _prepared()
    transfer(Subnetwork.none_of(source), source, target)
    for name, p in target.named_parameters():
        assert torch.equal(p, fresh[name])


def test_architecture_mismatch_is_listed():
    source = _model(1)
    other = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 2))
    with pytest.raises(ValueError, match=r"architectures differ .*param 0.weight: source \(6, 5\) vs target \(7, 5\)"):
        transfer(_subnetwork(source), source, other)
    with pytest.raises(ValueError, match="reinit must be one of"):
        transfer(_subnetwork(source), source, _model(2), reinit="some")
    bad = Subnetwork.from_masks({"0.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"subnetwork \(2, 2\) vs model \(6, 5\)"):
        transfer(bad, source, _model(2))
    missing = Subnetwork.from_masks({"9.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"missing parameters \['9.weight'\]"):
        transfer(missing, source, _model(2))
