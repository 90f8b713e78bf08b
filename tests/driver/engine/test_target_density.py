"""Discovery aimed at a size: the Lagrangian brings the masks' expected density
to the target, and the hard mask is cut to exactly that size."""
import pytest
import torch
from torch import nn

import subind_fast as sf
from subind.engine.protocol import Discovery, DiscoveryHooks, discover
from subind.engine.training import Metrics, TensorBatches, train


class _Classify:
    def loss(self, model, batch):
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    @torch.no_grad()
    def evaluate(self, model, data):
        model.eval()
        x, y = next(iter(data))
        logits = model(x)
        model.train()
        return Metrics(float(nn.functional.cross_entropy(logits, y)),
                       float((logits.argmax(1) == y).float().mean()))


def _trained():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    train(model, torch.optim.Adam(model.parameters(), 1e-2), _Classify(),
          TensorBatches(x, y, batch_size=64, shuffle=True), 10, seed=0)
    return model, TensorBatches(x, y, batch_size=64, shuffle=True), TensorBatches(x, y,
                                                                                  batch_size=512)


@pytest.mark.parametrize("target", [0.05, 0.2, 0.5])
def test_the_lagrangian_reaches_the_target_and_the_cut_is_exact(target, tmp_path):
    model, train_data, eval_data = _trained()
    result = discover(model, _Classify(), train_data, eval_data,
                      Discovery(target_density=target, epochs=30, mask_lr=0.05),
                      DiscoveryHooks(log_dir=tmp_path))
    meta = result.subnetwork.metadata
    # the masks came to the target (measured: within 0.004 of 0.05, 0.2 and 0.5)
    assert abs(meta["expected_density"] - target) < 0.02, meta
    assert abs(meta["density_before_cut"] - target) < 0.02, meta
    total = 8 * 32 + 32 * 2
    assert result.subnetwork.counts()["0.weight"][0] + result.subnetwork.counts()[
        "2.weight"][0] == round(target * total)  # the hard mask: exactly the size
    assert result.candidates == [(0.0, result.accuracy, result.density)]
    assert (tmp_path / "discovery-lambda0.csv").read_text().splitlines()[0].endswith(
        "target,expected_density")


def test_keep_exactly_breaks_ties_by_order_and_counts_units():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    sf.mask_model(model, init=lambda s: s.fill_(0.5))  # all tied
    assert sf.nn.keep_exactly(model, 0.5) == 5  # of 6 + 4 weights
    first, second = (layer.hard_mask() for layer in sf.masked_layers(model).values())
    # ties: the earlier layer, then the earlier element
    assert first.flatten()[:5].all() and not first.flatten()[5:].any() and not second.any()
    units = nn.Sequential(nn.Linear(4, 3))
    sf.mask_model(units, granularity="neuron",
                  init=lambda s: s.copy_(torch.tensor([[3.], [1.], [2.]])))
    assert sf.nn.keep_exactly(units, 0.5) == 4  # 6 of 12 asked: one whole unit of 4 fits
    assert units[0].hard_mask()[0].all() and not units[0].hard_mask()[1:].any()
    with pytest.raises(ValueError, match="density must be a number in"):
        sf.nn.keep_exactly(units, 1.5)


def test_shift_to_density_moves_every_logit_by_one_constant():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.Linear(8, 5))
    sf.mask_model(model, init=lambda s: s.normal_())
    before = torch.cat([layer.logits.detach().flatten().double()
                        for layer in sf.masked_layers(model).values()])
    c = sf.nn.shift_to_density(model, 0.3)
    after = torch.cat([layer.logits.detach().flatten().double()
                       for layer in sf.masked_layers(model).values()])
    torch.testing.assert_close(before - after, torch.full_like(before, c), rtol=0, atol=1e-6)
    assert sf.nn.density(model) == round(0.3 * 120) / 120  # no ties among normal draws
    assert sf.nn.shift_to_density(model, 0.3) == pytest.approx(0.0, abs=1e-6)  # already there


def test_bad_target_settings_are_named():
    model, train_data, eval_data = _trained()
    for settings, message in [(Discovery(target_density=1.0), "--target-density must be in"),
                              (Discovery(target_density=0.1, target_warmup=-1),
                               "--target-warmup must be in"),
                              (Discovery(target_density=0.1, method="magnitude", density=0.1),
                               "--target-density aims the trained masks at a size")]:
        with pytest.raises(ValueError, match=message):
            discover(model, _Classify(), train_data, eval_data, settings)


def _reads_back(monkeypatch, run) -> int:
    """How often our code (the engine and the library, not torch's own
    optimizers) read a tensor's value back to the host while ``run()`` ran:
    on a GPU each such read waits for the device."""
    import sys
    from pathlib import Path

    import subind
    ours = (str(Path(subind.__file__).parent), str(Path(sf.__file__).parent))
    reads = []

    def counting(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            # β's value is checked where it lives on the CPU only (ops/checks.py: beta_tensor):
            # on a GPU the buffer is on the device and nothing is read.
            if caller.startswith(ours) and not caller.endswith("checks.py"):
                reads.append(f"{name} at {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)
        return read

    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    run()
    monkeypatch.undo()
    return len(reads)


@pytest.mark.parametrize("target", [None, 0.2])
def test_a_training_step_reads_nothing_back_from_the_device(monkeypatch, target):
    """Reads happen per epoch (the log, the evaluation), never per step: twice
    the steps per epoch, the same number of reads."""
    model, _, eval_data = _trained()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 8, generator=g)
    y = (x[:, 0] > 0).long()
    settings = Discovery(epochs=2, mask_lr=0.05, **({"target_density": target} if target
                                                      else {"lambdas": [1e-3]}))
    counts = [_reads_back(monkeypatch, lambda: discover(
        model, _Classify(), TensorBatches(x, y, batch_size=size), eval_data, settings))
        for size in (128, 64)]
    assert counts[0] == counts[1], counts
