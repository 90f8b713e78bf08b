"""The one classification task: normalisation, uint8 images, class weights
and the ignore label, against plain PyTorch in float64."""
import torch
from torch import nn

from subind.engine.classification import IGNORE_LABEL, Classification, inverse_frequency_weights
from subind.engine.training import TensorBatches


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).double()


def test_loss_and_metrics_match_plain_pytorch():
    model = _model()
    images = torch.randint(0, 256, (6, 3, 2, 2), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, IGNORE_LABEL, 1, 0])
    weights = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    task = Classification(input_dtype=torch.float64, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4),
                          class_weights=weights)
    x = images.double() / 255
    x = (x - torch.tensor([0.5, 0.4, 0.3]).double().view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.3, 0.4]).double().view(1, 3, 1, 1)
    logits = model(x)
    expected = nn.functional.cross_entropy(logits, labels, weight=weights, ignore_index=-100)
    torch.testing.assert_close(task.loss(model, (images, labels)), expected)
    metrics = task.evaluate(model, TensorBatches(images, labels, batch_size=4))
    kept = labels != -100
    assert metrics.accuracy == float((logits.argmax(1)[kept] == labels[kept]).double().mean())
    assert model.training  # evaluate restores the mode
    # each counted example's correctness, in order: what specificity intervals resample
    right = task.correct(model, TensorBatches(images, labels, batch_size=4))
    assert torch.equal(right, logits.argmax(1)[kept] == labels[kept])
    assert float(right.double().mean()) == metrics.accuracy and model.training


def test_inverse_frequency_weights_skip_the_ignore_label():
    labels = torch.tensor([0, 0, 0, 1, IGNORE_LABEL])
    weights = inverse_frequency_weights(TensorBatches(torch.zeros(5, 1), labels, batch_size=2), 2)
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 4 / 2]))


def test_reestimate_batchnorm_averages_batch_statistics_in_float64():
    from subind.engine.training import reestimate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).double()
    model[1].running_mean.fill_(5.0)
    images = torch.randn(12, 3, 6, 6, dtype=torch.float64)
    data = TensorBatches(images, torch.zeros(12, dtype=torch.long), batch_size=4)
    weights = [p.clone() for p in model.parameters()]
    model.eval()
    assert reestimate_batchnorm(model, Classification(torch.float64), data)
    conv = model[0](images).detach()
    batches = conv.split(4)
    mean = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.transpose(0, 1).reshape(4, -1).var(dim=1) for b in batches]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(model[1].running_var, var, rtol=0, atol=1e-12)
    assert model[1].momentum == 0.3 and not model.training and not model[1].training
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert not reestimate_batchnorm(nn.Linear(2, 2), Classification(), data)
