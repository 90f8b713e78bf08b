"""Magnitude and lottery-ticket selection against a float64 NumPy reference."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import subind_fast as sf
from subind_fast import selection


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(9, 7), nn.ReLU(), nn.Conv1d(7, 5, 3), nn.LayerNorm(5),
                         nn.MultiheadAttention(6, 2))


def _reference_top(values: np.ndarray, density: float) -> np.ndarray:
    keep = int(round(density * values.size))
    order = np.argsort(-values, kind="stable")
    mask = np.zeros(values.size, dtype=bool)
    mask[order[:keep]] = True
    return mask


@pytest.mark.parametrize("density", [0.0, 0.1, 0.37, 1.0])
def test_magnitude_per_layer_keeps_the_largest_absolute_values(density):
    model = _model()
    sub = selection.magnitude(model, density)
    weights = selection.maskable_weights(model)
    assert set(sub.names()) == set(weights) == {"0.weight", "2.weight", "4.in_proj_weight",
                                                 "4.out_proj.weight"}
    for name, w in weights.items():
        ref = _reference_top(w.detach().double().abs().numpy().ravel(), density)
        assert np.array_equal(sub.mask(name).numpy().ravel(), ref), name


def test_magnitude_ranks_absolute_not_signed_values():
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-5.0, 1.0], [0.5, 2.0]]))
    sub = selection.magnitude(model, 0.5)
    assert sub.mask("0.weight").tolist() == [[True, False], [False, True]]


def test_global_scope_and_lottery_ticket():
    pretrained = _model()
    finetuned = copy.deepcopy(pretrained)
    with torch.no_grad():
        for p in finetuned.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    sub = selection.lottery_ticket(finetuned, pretrained, 0.2)
    names = list(selection.maskable_weights(finetuned))
    moved = np.concatenate([(dict(finetuned.named_parameters())[n].detach().double()
                             - dict(pretrained.named_parameters())[n].detach().double())
                            .abs().numpy().ravel() for n in names])
    ref = _reference_top(moved, 0.2)
    got = np.concatenate([sub.mask(n).numpy().ravel() for n in names])
    assert np.array_equal(got, ref)
    assert sub.metadata["method"] == "lottery_ticket" and sub.density() == pytest.approx(
        ref.sum() / ref.size)
    global_mag = selection.magnitude(finetuned, 0.2, scope="global")
    assert sum(k for k, _ in global_mag.counts().values()) == int(round(0.2 * ref.size))


def test_selection_works_with_transfer_and_analysis():
    source = _model()
    sub = selection.magnitude(source, 0.3, include=["0", "2"])
    assert set(sub.names()) == {"0.weight", "2.weight"}
    target = _model()
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    frozen = sf.transfer(sub, source, target, freeze=True)
    assert torch.equal(target[0].weight[sub.mask("0.weight")],
                       source[0].weight[sub.mask("0.weight")])
    assert len(frozen) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(density=1.5), "density"), (dict(density=0.5, scope="block"), "scope"),
    (dict(density=0.5, include=["nothing"]), "matches no maskable layer")])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        selection.magnitude(_model(), **kwargs)


def test_lottery_ticket_needs_the_same_architecture():
    with pytest.raises(ValueError, match="no parameter"):
        selection.lottery_ticket(_model(), nn.Sequential(nn.Linear(9, 7)), 0.1)
