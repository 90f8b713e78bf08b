"""How many times a discovery step evaluates σ over every masked weight.

Counted at the dispatcher: each call of a subind op that evaluates the
training mask over a weight (the masked GEMMs and their backward in a
training mode, the L0 penalty and its gradient) is one pass over that weight.
A step makes two (forward, backward): the L0 penalty is fused into them (the
*_l0 ops), where it used to add two of its own (sigmoid_sum and its backward)."""
from collections import Counter

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from subind.engine.protocol import Discovery, DiscoveryHooks, discover
from subind.engine.training import Metrics, TensorBatches

from classify_task import ClassifyTask

#: ops → the index of their mode argument (None: the op always evaluates σ)
SIGMA_OPS = {"masked_linear": 5, "masked_linear_l0": 5, "masked_linear_backward": 5,
             "masked_conv": 5, "masked_conv_l0": 5, "masked_conv_backward": 5,
             "mask_weight": 3, "mask_weight_backward": 4,
             "sigmoid_sum": None, "sigmoid_sum_backward": None}
TRAINING_MODES = {"soft", "concrete", "gumbel"}


class _CountSigmaPasses(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.passes = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        namespace, name = func.namespace, func._schema.name.split("::")[-1]
        if namespace == "subind" and name in SIGMA_OPS:
            index = SIGMA_OPS[name]
            if index is None or args[index] in TRAINING_MODES:
                self.passes[name] += 1
        return func(*args, **kwargs)



class _StepsOnly(ClassifyTask):
    """Evaluation runs no forward, so only the training steps are counted."""

    def evaluate(self, model, batches):
        return Metrics(0.0, 0.0)


def _count_one_epoch(batches_per_epoch: int) -> tuple[Counter, int]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    x, y = torch.randn(16 * batches_per_epoch, 8), torch.randint(0, 2, (16 * batches_per_epoch,))
    data = TensorBatches(x, y, batch_size=16)
    with _CountSigmaPasses() as counter:
        discover(model, _StepsOnly(), data, data, Discovery(lambdas=[1e-4], epochs=1),
                 DiscoveryHooks())
    return counter.passes, batches_per_epoch


def test_the_counter_sees_the_masked_gemms_of_every_step():
    passes, steps = _count_one_epoch(3)
    layers = 2
    forward = passes["masked_linear"] + passes["masked_linear_l0"]
    assert forward == passes["masked_linear_backward"] == layers * steps


def test_a_discovery_step_evaluates_sigma_twice_per_masked_weight():
    """Per step: what 6 steps cost beyond 3; and in all, one pass more per
    layer: discovery asks for the penalty once before the first step (no
    gradient), so every step's forward computes it in its mask pass."""
    few, few_steps = _count_one_epoch(3)
    many, many_steps = _count_one_epoch(6)
    layers, steps = 2, many_steps - few_steps
    per_steps = many - few
    assert sum(per_steps.values()) == 2 * layers * steps, dict(per_steps)
    assert per_steps["masked_linear_l0"] == per_steps["masked_linear_backward"] == layers * steps
    assert sum(few.values()) == 2 * layers * few_steps + layers, dict(few)
    assert few["sigmoid_sum"] == layers and "sigmoid_sum_backward" not in few, dict(few)
