"""Subnetwork: 1-bit packing, set algebra, controls, ablations, files."""
import json

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import subind_fast as sf
from subind_fast import Subnetwork
from subind_fast.bits import pack_bits, packed_size, unpack_bits


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1023, 4097])
def test_pack_unpack_round_trip(n):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.3
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(n) == (n + 7) // 8
    assert torch.equal(unpack_bits(packed, (n,)), mask)
    # Bit i of byte i // 8, least significant first (the layout the kernels read).
    i = int(mask.nonzero()[0]) if mask.any() else 0
    assert bool((packed[i // 8] >> (i % 8)) & 1) == bool(mask[i])


def test_pack_rejects_non_bool_and_unpack_checks_size():
    with pytest.raises(TypeError, match="bool tensor"):
        pack_bits(torch.ones(3))
    with pytest.raises(ValueError, match=r"must be 2 uint8 bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), (9,))


def _random_subnetwork(seed, shapes=(("a.weight", (5, 7)), ("b.weight", (13,))), p=0.4):
    gen = torch.Generator().manual_seed(seed)
    return Subnetwork.from_masks({n: torch.rand(s, generator=gen) < p for n, s in shapes})


@settings(max_examples=30, deadline=None)
@given(seed_a=st.integers(0, 10_000), seed_b=st.integers(0, 10_000), p=st.floats(0.0, 1.0))
def test_set_algebra_matches_bool_reference(seed_a, seed_b, p):
    a, b = _random_subnetwork(seed_a, p=p), _random_subnetwork(seed_b)
    ma, mb = a.masks(), b.masks()
    for name in ma:
        assert torch.equal((a & b).mask(name), ma[name] & mb[name])
        assert torch.equal((a | b).mask(name), ma[name] | mb[name])
        assert torch.equal((a - b).mask(name), ma[name] & ~mb[name])
        assert torch.equal((~a).mask(name), ~ma[name])
    inter = sum(int((ma[n] & mb[n]).sum()) for n in ma)
    union = sum(int((ma[n] | mb[n]).sum()) for n in ma)
    assert a.iou(b) == pytest.approx(inter / union if union else 1.0)
    assert ~~a == a and (a & a) == a
    # counts ignore the padding bits of the last byte
    assert (~a).counts()["b.weight"][0] == 13 - a.counts()["b.weight"][0]


def test_density_counts_and_summary():
    sub = Subnetwork.from_masks({"w": torch.tensor([[True, False], [True, True]]),
                                 "v": torch.zeros(6, dtype=torch.bool)})
    assert sub.counts() == {"v": (0, 6), "w": (3, 4)}
    assert sub.density() == pytest.approx(0.3)
    assert sub.layer_density()["w"] == 0.75
    assert "total" in sub.summary() and "0.7500" in sub.summary()
    assert sub.nbytes() == 1 + 1
    with pytest.raises(ValueError, match="different parameters"):
        sub & Subnetwork.from_masks({"w": torch.ones(2, 2, dtype=torch.bool)})


def test_controls_keep_per_layer_counts_and_are_reproducible():
    sub = _random_subnetwork(1, shapes=(("a.weight", (40, 30)), ("b.weight", (101,))), p=0.2)
    rand = sub.random_like(seed=3)
    comp = sub.complement_sample(seed=3)
    for control in (rand, comp):
        assert {n: c[0] for n, c in control.counts().items()} == {n: c[0] for n, c in sub.counts().items()}
    assert rand == sub.random_like(seed=3) and rand != sub.random_like(seed=4)
    assert comp == sub.complement_sample(seed=3)
    assert all(k == 0 for k, _ in (comp & sub).counts().values())  # disjoint from the subnetwork
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        sub.random_like(seed=-1)
    big = Subnetwork.from_masks({"w": torch.tensor([True, True, False])})
    with pytest.raises(ValueError, match="holds 2 entries but only 1 lie outside"):
        big.complement_sample(seed=0)


def _masked_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    sf.mask_model(model)
    for layer in sf.masked_layers(model).values():
        nn.init.normal_(layer.logits)
    return model


def test_subnetwork_of_keys_weights_by_parameter_name():
    model = _masked_mlp()
    sub = sf.nn.subnetwork_of(model, metadata={"lambda": 1e-7})
    assert sub.names() == ["0.weight", "2.weight"]
    assert torch.equal(sub.mask("0.weight"), model[0].logits > 0)
    assert sub.metadata == {"method": "continuous", "granularity": "weight", "lambda": 1e-7}


@pytest.mark.parametrize("how", ["keep", "zero", "random"])
def test_ablations(how):
    model = _masked_mlp()
    sub = sf.nn.subnetwork_of(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sub.ablate(model, how, seed=1)
    for name in sub.names():
        gamma = sub.mask(name)
        after, orig = dict(model.named_parameters())[name], before[name]
        if how == "keep":
            assert torch.equal(after, orig * gamma)
        elif how == "zero":
            assert torch.equal(after, orig * ~gamma)
        else:
            assert torch.equal(after[~gamma], orig[~gamma])
            assert not torch.equal(after[gamma], orig[gamma])
            bound = 1 / orig.shape[1] ** 0.5  # nn.Linear's kaiming-uniform init range
            assert after[gamma].abs().max() <= bound
    assert torch.equal(dict(model.named_parameters())["0.bias"], before["0.bias"])


def test_save_load_round_trip_and_atomicity(tmp_path):
    sub = _random_subnetwork(5)
    sub.metadata = {"model": "gpt2-2l", "beta_final": 100}
    path = sub.save(tmp_path / "nested" / "sub.safetensors")
    loaded = Subnetwork.load(path)
    assert loaded == sub and loaded.metadata == sub.metadata
    assert not [p for p in path.parent.iterdir() if p.name != "sub.safetensors"]  # no temp left


def test_load_rejects_truncated_corrupt_and_wrong_version(tmp_path):
    from safetensors.torch import save_file

    good = _random_subnetwork(2).save(tmp_path / "good.safetensors")
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.safetensors: not a readable subnetwork file"):
        Subnetwork.load(tmp_path / "truncated.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable subnetwork file"):
        Subnetwork.load(tmp_path / "junk.safetensors")
    meta = {"format": "subind-subnetwork", "format_version": "99", "shapes": json.dumps({"w": [3]})}
    save_file({"w": torch.zeros(1, dtype=torch.uint8)}, str(tmp_path / "v99.safetensors"), meta)
    with pytest.raises(ValueError, match="format version '99' is not supported"):
        Subnetwork.load(tmp_path / "v99.safetensors")
    meta.update(format_version="1", shapes=json.dumps({"w": [30]}))
    save_file({"w": torch.zeros(1, dtype=torch.uint8)}, str(tmp_path / "bad.safetensors"), meta)
    with pytest.raises(ValueError, match="1 packed bytes do not fit shape"):
        Subnetwork.load(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        Subnetwork.load(tmp_path / "missing.safetensors")


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    import safetensors.torch

    sub = _random_subnetwork(3)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        sub.save(tmp_path / "sub.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("field, value", [
    ("shapes", '{"w": [3, -5]}'), ("shapes", '{"w": "abc"}'), ("shapes", "[1, 2]"),
    ("shapes", '{"w": [1e20]}'), ("shapes", '{"w": [true, 15]}'), ("metadata", "[1]"),
    ("metadata", '"x"')])
def test_load_rejects_crafted_metadata_naming_the_file(tmp_path, field, value):
    from safetensors import safe_open
    from safetensors.torch import save_file

    Subnetwork.from_masks({"w": torch.ones(3, 5, dtype=torch.bool)}).save(tmp_path / "s.st")
    with safe_open(str(tmp_path / "s.st"), "pt") as handle:
        meta, bits = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    save_file(bits, str(tmp_path / "crafted.st"), metadata={**meta, field: value})
    with pytest.raises(ValueError, match=r"crafted\.st: damaged subnetwork metadata"):
        Subnetwork.load(tmp_path / "crafted.st")


def test_saved_files_take_the_umask_not_0600(tmp_path):
    import os

    Subnetwork.from_masks({"w": torch.ones(3, dtype=torch.bool)}).save(tmp_path / "s.st")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "s.st").stat().st_mode & 0o777 == 0o666 & ~mask


def test_padding_bits_that_are_set_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    sub = sf.Subnetwork.from_masks({"w": torch.ones(2, 3, dtype=torch.bool)})
    path = sub.save(tmp_path / "s.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    bits = load_file(str(path))
    bits["w"][-1] = 0xFF  # 6 entries: the top two bits are padding
    save_file(bits, str(path), metadata=meta)
    with pytest.raises(ValueError, match="padding bits"):
        sf.Subnetwork.load(path)


def _head_subnetwork():
    unit_masks = {"attn.weight": torch.tensor([[True, False, True, False]]),
                  "mlp.weight": torch.tensor([[True], [False], [False]])}
    shapes = {"attn.weight": (6, 8), "mlp.weight": (3, 5)}
    return sf.Subnetwork.from_unit_masks(unit_masks, shapes)


def test_set_algebra_and_controls_keep_units():
    """A head- or neuron-level subnetwork stays one through &, |, -, ~, and
    its random and complement controls draw whole units."""
    sub = _head_subnetwork()
    other = sf.Subnetwork.from_unit_masks(
        {"attn.weight": torch.tensor([[True, True, False, False]]),
         "mlp.weight": torch.tensor([[False], [True], [True]])},
        {"attn.weight": (6, 8), "mlp.weight": (3, 5)})
    for combined in (sub & other, sub | other, sub - other, ~sub):
        assert combined.metadata["units"] == sub.metadata["units"]
        assert combined.unit_mask("attn.weight").shape == (1, 4)
    assert (~sub).unit_mask("attn.weight").tolist() == [[False, True, False, True]]
    for seed in range(5):
        for control in (sub.random_like(seed), sub.complement_sample(seed)):
            assert control.unit_mask("attn.weight").sum() == 2  # whole heads, as many
            assert control.unit_mask("mlp.weight").sum() == 1
            assert control.counts() == sub.counts()
        complement = sub.complement_sample(seed)
        assert not (complement.unit_mask("attn.weight") & sub.unit_mask("attn.weight")).any()
    plain = sf.Subnetwork.from_masks({"attn.weight": torch.ones(6, 8, dtype=torch.bool)})
    assert "units" not in (plain & plain).metadata


def test_from_unit_masks_names_its_errors():
    with pytest.raises(ValueError, match="no shape given for \\['b'\\]"):
        sf.Subnetwork.from_unit_masks({"b": torch.ones(1, 2, dtype=torch.bool)}, {})
    with pytest.raises(ValueError, match="the unit mask of a"):
        sf.Subnetwork.from_unit_masks({"a": torch.ones(1, 3, dtype=torch.bool)},
                                      {"a": (2, 8)})
