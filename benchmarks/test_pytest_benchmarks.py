"""The benchmark cases under pytest-benchmark (layers, optimizers, model
steps), for saved runs compared across commits:

    pytest benchmarks/ --benchmark-only --benchmark-autosave
    pytest benchmarks/ --benchmark-only --benchmark-compare

Each case builds its providers with the same code as the bench scripts
(bench_masked_layers.py, bench_optim.py, bench_model_step.py), on the CPU in
float32 with the process's thread count; groups compare providers.
"""
import pytest
import torch

from benchmarks import bench_masked_layers as layers
from benchmarks import bench_model_step as model_step
from benchmarks import bench_optim as optim

CPU = torch.device("cpu")
LAYER_CASES = [c for c in layers.CPU_CASES if c.name.startswith(("GPT-2 M=1024",
                                                                 "ResNet18 layer1"))]


@pytest.mark.parametrize("provider", ["plain", "eager", "compile", "ours"])
@pytest.mark.parametrize("case", LAYER_CASES, ids=lambda c: c.name)
def test_masked_layer_forward_backward(benchmark, case, provider):
    benchmark.group = f"layer {case.name}"
    module = layers.build(provider, case, CPU, torch.float32)
    x = case.make_input(CPU, torch.float32).requires_grad_()

    def step():
        module(x).sum().backward()

    benchmark(step)


@pytest.mark.parametrize("provider", list(optim.PROVIDERS))
def test_frozen_update_optimizer_step(benchmark, provider):
    benchmark.group = "optimizer tiny GPT-2"
    params, masks = optim.make_params(optim.tiny_gpt2_shapes(), CPU)
    benchmark(optim.PROVIDERS[provider](params, masks))


MODEL_CASES = [c for c in model_step.CPU_CASES if "GPT-2" in c.name]


@pytest.mark.parametrize("provider", [p for p in model_step.PROVIDERS])
@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name.split(" (")[0])
def test_discovery_step(benchmark, case, provider):
    if provider == "neurosurgeon" and (case.neurosurgeon_why_not
                                       or not layers.neurosurgeon_available()):
        pytest.skip(case.neurosurgeon_why_not or "neurosurgeon is not installed")
    benchmark.group = f"discovery step {case.name}"
    model, l0 = model_step.build(provider, case, CPU, torch.float32)
    batch = case.make_batch(CPU, torch.float32)
    benchmark(model_step.step_fn(model, l0, batch))
