"""The discovery objective and ablations in the engine (engine/ablation.py):
the KL objective against a float64 computation, the corrupted ablation's
resample pairing through a whole training step, refusals."""
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


def test_corrupted_ablation_runs_the_resampled_batch_before_each_forward():
    model = _model()
    task = ablating(Classification(input_dtype=torch.float64), model, "corrupted", "labels")
    x = torch.randn(4, 5, dtype=torch.float64)
    sf.set_mode(model, "hard")
    for layer in sf.masked_layers(model).values():
        with torch.no_grad():
            layer.logits.fill_(-1.0)  # everything removed: the output is the paired input's
    with torch.no_grad(), sf.nn.unmasked(model):
        paired = model(x.roll(1, 0))
    torch.testing.assert_close(task.logits(model, x), paired, rtol=1e-12, atol=1e-12)


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
