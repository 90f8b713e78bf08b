"""--kernels and --compile: the choice, and discovery with a compiled model."""
import torch
from torch import nn

import subind_fast as sf
from subind.engine.protocol import Discovery, DiscoveryHooks, discover
from subind.engine.speed import apply_speed_options, compile_wanted
from subind.engine.training import TensorBatches

from classify_task import ClassifyTask



def test_auto_compiles_on_cuda_only_and_kernels_are_set_per_process():
    assert compile_wanted("auto", "cuda:1") and not compile_wanted("auto", "cpu")
    assert compile_wanted("on", "cpu") and not compile_wanted("off", "cuda")
    assert apply_speed_options("eager", "off", "cpu") is False
    assert sf.kernels() == "eager"
    sf.set_kernels("fused")


def test_discovery_with_a_compiled_model_matches_the_eager_run():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(64, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    batches = TensorBatches(x, y, batch_size=32)
    results = [discover(model, ClassifyTask(), batches, batches,
                        Discovery(lambdas=[1e-4], epochs=3, mask_lr=5e-2),
                        DiscoveryHooks(compile_model=compiled)) for compiled in (False, True)]
    eager_run, compiled_run = (r.subnetwork.masks() for r in results)
    equal = sum((eager_run[k] == compiled_run[k]).sum().item() for k in eager_run)
    assert equal / sum(m.numel() for m in eager_run.values()) >= 0.99
