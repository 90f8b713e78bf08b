"""The discovery objective and ablations in the engine (engine/ablation.py):
the KL objective against a float64 computation, the corrupted ablation's
pairing over the data set (each batch's partners recorded before it), refusals."""
import pytest
import torch
from torch import nn

import subind_fast as sf
from subind.engine.ablation import ablating, start_means
from subind.engine.classification import IGNORE_LABEL, Classification


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    sf.mask_model(model, init=lambda s: s.normal_())
    return model.double()  # the logits too: float64 throughout


def test_kl_objective_is_kl_from_the_full_model_over_counted_rows():
    model = _model()
    task = ablating(Classification(input_dtype=torch.float64), model, "zero", "kl")
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, IGNORE_LABEL, 2, 0, IGNORE_LABEL])
    loss = task.loss(model, (x, y))
    with torch.no_grad(), sf.nn.unmasked(model):
        full = model(x).log_softmax(-1)
    masked = model(x).log_softmax(-1)
    rows = (full.exp() * (full - masked)).sum(-1)[y != IGNORE_LABEL]
    torch.testing.assert_close(loss, rows.mean(), rtol=1e-12, atol=1e-12)
    loss.backward()
    assert all(layer.logits.grad is not None for layer in sf.masked_layers(model).values())
    sf.set_mode(model, "none")  # nothing removed: the model is its own reference
    assert float(task.loss(model, (x, y))) == pytest.approx(0.0, abs=1e-12)


def test_corrupted_ablation_runs_each_batchs_partners_before_it():
    """Every weight removed: the masked model's output on a batch is the full
    model's on the batch's partners (a derangement of the data set), in
    training and evaluation loops alike."""
    from torch.utils.data import DataLoader, TensorDataset

    from subind.engine.ablation import CorruptedPairs, recording_partners

    model = _model()
    labels = Classification(input_dtype=torch.float64)
    task = ablating(labels, model, "corrupted", "labels")
    sf.set_mode(model, "hard")
    for layer in sf.masked_layers(model).values():
        with torch.no_grad():
            layer.logits.fill_(-1.0)  # everything removed: the output is the partner's
    x = torch.randn(7, 5, dtype=torch.float64)
    pairs = CorruptedPairs(TensorDataset(x, torch.zeros(7, dtype=torch.long)), seed=3)
    seen = []
    for batch in recording_partners(DataLoader(pairs, batch_size=3), model, labels):
        seen.append(task.logits(model, batch[0]))
    with torch.no_grad(), sf.nn.unmasked(model):
        partners = model(x[pairs.partner])
    torch.testing.assert_close(torch.cat(seen), partners, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="wrap the data set in"):
        next(iter(recording_partners([(x, None)], model, labels)))


def test_mean_ablation_starts_from_the_training_inputs():
    model = _model()
    task = ablating(Classification(input_dtype=torch.float64), model, "mean", "labels")
    batches = [(torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long))
               for _ in range(3)]
    start_means(model, task, "mean", batches)
    first = sf.masked_layers(model)["0"]
    torch.testing.assert_close(first.ablation_input, torch.cat([b[0] for b in batches]).mean(0))
    with pytest.raises(ValueError, match="ablation must be one of"):
        ablating(task, model, "resample", "labels")
    with pytest.raises(ValueError, match="objective must be one of"):
        ablating(task, model, "zero", "accuracy")
