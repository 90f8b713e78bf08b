"""subind_fast.analysis against direct bool-tensor computations (float64)."""
import pytest
import torch
from torch import nn

import subind_fast as sf
from subind_fast import analysis as A

SHAPES = {"h.0.w": (7, 9), "h.1.w": (5, 3, 3), "head.w": (4, 13)}


def _random(seed, p):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s, generator=g) < p for n, s in SHAPES.items()}


def _ref(ma, mb, names):
    a = torch.cat([ma[n].flatten() for n in names]).double()
    b = torch.cat([mb[n].flatten() for n in names]).double()
    both, either = (a * b).sum(), torch.clamp(a + b, max=1).sum()
    return dict(iou=float(both / either) if either else 1.0,
                iom=float(both / min(a.sum(), b.sum())) if min(a.sum(), b.sum()) else 0.0,
                shared_a=float(both / a.sum()) if a.sum() else 0.0)


@pytest.mark.parametrize("pa, pb", [(0.3, 0.6), (0.05, 0.9), (0.0, 0.5), (1.0, 1.0)])
def test_overlap_matches_bool_tensors(pa, pb):
    ma, mb = _random(0, pa), _random(1, pb)
    table = A.overlap(sf.Subnetwork.from_masks(ma), sf.Subnetwork.from_masks(mb))
    for name in SHAPES:
        ref = _ref(ma, mb, [name])
        row = table[name]
        assert (row.iou, row.iom, row.shared_a) == pytest.approx(
            (ref["iou"], ref["iom"], ref["shared_a"]), abs=1e-15)
    ref = _ref(ma, mb, list(SHAPES))
    total = table[A.TOTAL]
    assert total.size == sum(torch.Size(s).numel() for s in SHAPES.values())
    assert (total.iou, total.iom) == pytest.approx((ref["iou"], ref["iom"]), abs=1e-15)
    assert A.p_specialize(sf.Subnetwork.from_masks(ma), sf.Subnetwork.from_masks(mb)) == \
        pytest.approx(1 - ref["iom"], abs=1e-15)


def test_sharing_is_the_share_in_the_union_of_the_others():
    masks = {k: _random(i, 0.4) for i, k in enumerate("abc")}
    subs = {k: sf.Subnetwork.from_masks(m) for k, m in masks.items()}
    shared = A.shared_with_others(subs)
    for k in "abc":
        others = [masks[o] for o in "abc" if o != k]
        union = {n: others[0][n] | others[1][n] for n in SHAPES}
        assert shared[k][A.TOTAL] == pytest.approx(_ref(masks[k], union, list(SHAPES))["shared_a"],
                                                   abs=1e-15)
    with pytest.raises(ValueError, match="at least two"):
        A.shared_with_others({"a": subs["a"]})


def test_reuse_of_a_subset_is_one_and_stability_of_copies_is_one():
    big = _random(0, 0.6)
    small = {n: m & _random(1, 0.5)[n] for n, m in big.items()}
    a, b = sf.Subnetwork.from_masks(big), sf.Subnetwork.from_masks(small)
    assert A.p_reuse(a, b) == 1.0 and A.p_specialize(a, b) == 0.0
    result = A.stability([a, a, b])
    assert result.labels == ("0", "1", "2") and result.pairs[("0", "1")].iou == 1.0
    assert min(result.iou()) == pytest.approx(_ref(big, small, list(SHAPES))["iou"])
    assert result.core == b and result.majority == a  # b ⊂ a: a is kept by 2 of 3


def test_votes_count_the_seeds_that_keep_each_weight():
    masks = [_random(seed, 0.5) for seed in range(5)]
    subs = [sf.Subnetwork.from_masks(m) for m in masks]
    for at_least in range(1, 6):
        kept = A.votes(subs, at_least)
        for name in SHAPES:
            count = sum(m[name].int() for m in masks)
            assert torch.equal(kept.mask(name), count >= at_least)
    assert A.votes(subs, 5) == subs[0] & subs[1] & subs[2] & subs[3] & subs[4]
    with pytest.raises(ValueError, match="at_least"):
        A.votes(subs, 0)


@pytest.mark.parametrize("pa, pb", [(0.3, 0.3), (0.05, 0.9), (0.6, 0.2)])
def test_chance_overlap_is_what_random_masks_of_the_same_sizes_share(pa, pb):
    a = sf.Subnetwork.from_masks(_random(0, pa))
    b = sf.Subnetwork.from_masks(_random(1, pb))
    chance = A.chance_overlap(a, b)
    expected = sum(a.mask(n).sum().item() * b.mask(n).sum().item() / torch.Size(s).numel()
                   for n, s in SHAPES.items())
    assert chance.both == round(expected) and chance.a == A.overlap(a, b)[A.TOTAL].a
    # Random masks of those sizes (random_like keeps each parameter's count) meet it on average.
    draws = [A.overlap(a.random_like(seed), b.random_like(1000 + seed))[A.TOTAL].both
             for seed in range(400)]
    assert sum(draws) / len(draws) == pytest.approx(expected, rel=0.05, abs=0.5)


def test_stability_reports_each_pair_against_chance_and_by_block():
    subs = {f"seed{k}": sf.Subnetwork.from_masks(_random(k, 0.4)) for k in range(3)}
    result = A.stability(subs)
    assert set(result.pairs) == {("seed0", "seed1"), ("seed0", "seed2"), ("seed1", "seed2")}
    for pair, row in result.pairs.items():
        assert row == A.overlap(subs[pair[0]], subs[pair[1]])[A.TOTAL]
        assert result.chance[pair] == A.chance_overlap(subs[pair[0]], subs[pair[1]])
        assert result.by_block[pair] == A.overlap_by_group(subs[pair[0]], subs[pair[1]])
    # Independent random masks sit at the chance level.
    assert result.mean_iou == pytest.approx(result.mean_chance_iou, abs=0.05)
    with pytest.raises(ValueError, match="at least two"):
        A.stability({"only": subs["seed0"]})


def test_inverse_mask_test_zeroes_the_subnetwork_and_its_controls():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 2))
    sub = sf.Subnetwork.from_masks({"0.weight": torch.rand(6, 6) < 0.3,
                                    "1.weight": torch.rand(2, 6) < 0.3})
    x = torch.randn(16, 6)
    score = lambda m: float(m(x).detach().abs().sum())
    result = A.inverse_mask_test(model, sub, score)
    assert set(result) == {"intact", "without subnetwork", "without random",
                           "without complement"}
    zeroed = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 2))
    zeroed.load_state_dict(model.state_dict())
    sub.ablate(zeroed, "zero")
    assert result["without subnetwork"] == pytest.approx(score(zeroed))
    assert result["intact"] == pytest.approx(score(model))  # the model itself is untouched
    assert result["without random"] != result["intact"]


def test_inverse_mask_test_ablates_to_the_mean_and_to_a_corrupted_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    removed = {"0.weight": torch.rand(5, 6) < 0.4, "2.weight": torch.rand(2, 5) < 0.4}
    sub = sf.Subnetwork.from_masks(removed)
    x = torch.randn(16, 6, dtype=torch.float64)
    reference = [torch.randn(8, 6, dtype=torch.float64) for _ in range(3)]
    readout = torch.randn(2, dtype=torch.float64)
    score = lambda m: float((m(x).detach() * readout).sum())

    # float64 oracle: each layer's removed weights read its mean input over the reference set
    inputs = torch.cat(reference)
    mean_0 = inputs.mean(0)
    mean_2 = torch.tanh(model[0](inputs)).mean(0).detach()
    first, second = model[0], model[2]

    def ablated(layer, gamma, h, mean):
        return (nn.functional.linear(h, layer.weight * ~gamma, layer.bias)
                + nn.functional.linear(mean, layer.weight * gamma))

    with torch.no_grad():
        h = torch.tanh(ablated(first, removed["0.weight"], x, mean_0))
        expected = float((ablated(second, removed["2.weight"], h, mean_2) * readout).sum())
    result = A.inverse_mask_test(model, sub, score, ablation="mean", reference=reference)
    assert result["without subnetwork"] == pytest.approx(expected, rel=1e-12)
    assert result["intact"] == pytest.approx(score(model))

    # everything removed, corrupted: each input's output is that of the input it is paired with
    everything = sf.Subnetwork.all_of(model, ["0.weight", "2.weight"])
    result = A.inverse_mask_test(model, everything, score, ablation="corrupted")
    assert result["without subnetwork"] == pytest.approx(
        float((model(x.roll(1, 0)).detach() * readout).sum()), rel=1e-12)
    with pytest.raises(ValueError, match="needs reference="):
        A.inverse_mask_test(model, sub, score, ablation="mean")
    with pytest.raises(ValueError, match="a learned one needs training"):
        A.inverse_mask_test(model, sub, score, ablation="learned")


def test_incompatible_subnetworks_are_refused():
    a = sf.Subnetwork.from_masks(_random(0, 0.5))
    b = sf.Subnetwork.from_masks({"other": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="different parameters"):
        A.overlap(a, b)


def test_block_of_and_overlap_by_block():
    from subind_fast.naming import block_of

    assert block_of("transformer.h.3.mlp.c_fc.weight") == "h.3"
    assert block_of("blocks.11.attn.qkv.weight") == "blocks.11"
    assert block_of("layer2.0.conv1.weight") == "layer2"  # ResNet stages: the name's first part
    assert block_of("head.weight") == "head"
    ma, mb = _random(0, 0.4), _random(1, 0.5)
    groups = A.overlap_by_group(sf.Subnetwork.from_masks(ma), sf.Subnetwork.from_masks(mb))
    assert set(groups) == {"h.0", "h.1", "head"}
    for group, names in (("h.0", ["h.0.w"]), ("h.1", ["h.1.w"]), ("head", ["head.w"])):
        assert groups[group].iou == pytest.approx(_ref(ma, mb, names)["iou"])


def test_specificity_scores_each_subnetwork_on_every_subtask():
    # Two "subtasks" read disjoint weights: each subnetwork keeps one of them.
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    first = sf.Subnetwork.from_masks({"weight": torch.tensor([[True, True, False, False]])})
    second = sf.Subnetwork.from_masks({"weight": torch.tensor([[False, False, True, True]])})
    evaluators = {"t0": lambda m: float(m.weight.detach()[0, :2].sum()),
                  "t1": lambda m: float(m.weight.detach()[0, 2:].sum())}
    found = A.specificity(model, {"A": first, "B": second}, evaluators, {"A": "t0", "B": "t1"})
    assert found.intact == {"t0": 2.0, "t1": 2.0}
    assert found.alone == {"A": {"t0": 2.0, "t1": 0.0}, "B": {"t0": 0.0, "t1": 2.0}}
    assert found.removed == {"A": {"t0": 0.0, "t1": 2.0}, "B": {"t0": 2.0, "t1": 0.0}}
    assert found.score == {"A": 2.0, "B": 2.0} and found.removal_score == {"A": 2.0, "B": 2.0}
    assert torch.equal(model.weight, torch.ones(1, 4))  # the model is left as it was
    # A subnetwork holding everything is not specific.
    both = first | second
    found = A.specificity(model, {"A": both, "B": second}, evaluators, {"A": "t0", "B": "t1"})
    assert found.score["A"] == 0.0 and found.removal_score["A"] == 0.0
    with pytest.raises(ValueError, match="at least two"):
        A.specificity(model, {"A": first}, {"t0": evaluators["t0"]}, {"A": "t0"})
    with pytest.raises(ValueError, match="its own subtask"):
        A.specificity(model, {"A": first, "B": second}, evaluators, {"A": "t0", "B": "t9"})


def _per_example(pattern: dict):
    """Evaluators giving each example's correctness: example i of subtask t is
    right when the weights ``pattern[t][i]`` names are all kept (nonzero)."""
    def evaluator(task):
        return lambda m: torch.tensor([bool((m.weight.detach()[0, list(cols)] != 0).all())
                                       for cols in pattern[task]])
    return {task: evaluator(task) for task in pattern}


def test_specificity_intervals_resample_each_subtask_with_its_pairs_kept():
    import numpy as np

    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 0.0]]))  # weight 3 is dead
    first = sf.Subnetwork.from_masks({"weight": torch.tensor([[True, True, False, False]])})
    second = sf.Subnetwork.from_masks({"weight": torch.tensor([[False, False, True, True]])})
    rng = np.random.default_rng(0)
    # t0 (400 examples): 30 % need weight 0 (A's), 40 % weight 2 (B's), 30 % the dead one;
    # t1 (500 examples): each needs weight 2 or 1, half and half
    kinds = rng.choice(3, size=400, p=[0.3, 0.4, 0.3])
    pattern = {"t0": [((0,), (2,), (3,))[k] for k in kinds],
               "t1": [(2,) if rng.random() < 0.5 else (1,) for _ in range(500)]}
    found = A.specificity(model, {"A": first, "B": second}, _per_example(pattern),
                          {"A": "t0", "B": "t1"})
    x, y = float((kinds == 0).mean()), float((kinds == 1).mean())
    w = sum(c == (2,) for c in pattern["t1"]) / 500
    assert found.intact == pytest.approx({"t0": x + y, "t1": 1.0}, abs=1e-12)
    assert found.alone["A"] == pytest.approx({"t0": x, "t1": 1 - w}, abs=1e-12)
    assert found.removed["A"] == pytest.approx({"t0": y, "t1": w}, abs=1e-12)
    assert found.score["A"] == pytest.approx(x - (1 - w), abs=1e-12)
    assert found.removal_score["A"] == pytest.approx(x - (1 - w), abs=1e-12)
    intervals = found.intervals(draws=4000, seed=1)
    # The score: a difference of proportions on two independent sets, so its bootstrap
    # interval is about ±1.96 binomial standard errors.
    se = np.sqrt(x * (1 - x) / 400 + w * (1 - w) / 500)
    score = intervals["A"]["score"]
    assert score.low == pytest.approx(found.score["A"] - 1.96 * se, abs=0.25 * 1.96 * se)
    assert score.high == pytest.approx(found.score["A"] + 1.96 * se, abs=0.25 * 1.96 * se)
    # The removal score: the intact model and A's removal are scored on the same examples,
    # and per example of t0 the drop is 1 exactly for the 30 % A serves, so its spread is
    # that proportion's; resampling the two accuracies apart would add both of theirs
    # (sqrt(0.45/0.21) ≈ 1.5 times wider on t0).
    removal = intervals["A"]["removal_score"]
    assert removal.high - removal.low == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert found.intervals(draws=4000, seed=1) == intervals  # the seed fixes them
    certain = A.specificity(model, {"A": first, "B": second},
                            _per_example({"t0": [(0,)] * 50, "t1": [(2,)] * 50}),
                            {"A": "t0", "B": "t1"}).intervals(draws=200)
    assert certain["A"]["score"] == A.Interval(1.0, 1.0)
    assert certain["A"]["removal_score"] == A.Interval(1.0, 1.0)


def test_specificity_without_per_example_scores_has_no_intervals_and_bad_scores_are_named():
    model = nn.Linear(4, 1, bias=False)
    first = sf.Subnetwork.from_masks({"weight": torch.tensor([[True, True, False, False]])})
    second = ~first
    both = {"A": first, "B": second}
    own = {"A": "t0", "B": "t1"}
    accuracies = {"t0": lambda m: 0.5, "t1": lambda m: 0.25}
    assert A.specificity(model, both, accuracies, own).intervals() is None
    with pytest.raises(ValueError, match="subtask t0: an evaluator gives an accuracy or a "
                                         "non-empty 1-D bool tensor"):
        A.specificity(model, both, {"t0": lambda m: torch.ones(3), "t1": lambda m: 0.5}, own)
    sizes = iter([3, 4, 4, 4, 4, 4])
    with pytest.raises(ValueError, match="must score the same examples each time"):
        A.specificity(model, both, {"t0": lambda m: torch.ones(next(sizes), dtype=torch.bool),
                                    "t1": lambda m: torch.ones(2, dtype=torch.bool)}, own)
