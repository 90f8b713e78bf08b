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
    for settings, message in [(Discovery(target_density=1.0), "target_density must be in"),
                              (Discovery(target_density=0.1, target_warmup=-1), "target_warmup"),
                              (Discovery(target_density=0.1, method="magnitude", density=0.1),
                               "target_density is for the trained methods")]:
        with pytest.raises(ValueError, match=message):
            discover(model, _Classify(), train_data, eval_data, settings)
