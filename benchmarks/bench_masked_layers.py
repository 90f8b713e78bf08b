"""Masked linear / conv layers, side by side in one process:

  plain         the unmasked layer doing the same GEMMs (∂x, ∂W, fwd): the floor
  eager         the composite sigmoid → mul → F.linear / conv (what users write)
  neurosurgeon  NeuroSurgeon's ContSparseLinear / ContSparseConv2d
  compile       torch.compile of the eager composite
  ours          subind_fast.nn.MaskedLinear / MaskedConv2d

Every masked provider trains the logits with the weight frozen (discovery);
the floor trains its weight so it runs the same three GEMMs.  Prints fwd, bwd
and fwd+bwd medians, the ratio to the floor, and the bytes saved for backward
per masked weight; appends every number to benchmarks/results/results.csv.

    python -m benchmarks.bench_masked_layers            # CPU, 1 thread
    python -m benchmarks.bench_masked_layers --device cuda --dtype bfloat16
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

import subind_fast as sf
from subind_fast.testing.baselines import eager_composite
from subind_fast.testing.memory import saved_bytes

from . import harness

BETA = 5.0
MASK_INIT = 0.05  # slightly positive so hard masks are not empty; timing does not depend on it


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "linear" | "conv"
    dims: tuple  # linear: (M, K, N); conv: (batch, C_in, C_out, H, kernel, stride)

    def make_plain(self, device, dtype) -> nn.Module:
        if self.kind == "linear":
            _, k, n = self.dims
            return nn.Linear(k, n, device=device, dtype=dtype)
        _, cin, cout, _, kernel, stride = self.dims
        return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, device=device, dtype=dtype)

    def make_input(self, device, dtype) -> torch.Tensor:
        if self.kind == "linear":
            m, k, _ = self.dims
            return torch.randn(m, k, device=device, dtype=dtype)
        batch, cin, _, h, _, _ = self.dims
        return torch.randn(batch, cin, h, h, device=device, dtype=dtype)


CPU_CASES = [
    # The fixed cost of one call (Python, dispatch, autograd): on a GPU, where
    # a ViT-B MLP GEMM takes tens of µs, this overhead is the step time.
    Case("per-call M=8 16→16", "linear", (8, 16, 16)),
    Case("tiny-GPT-2 M=2048 128→512", "linear", (2048, 128, 512)),
    Case("tiny-GPT-2 M=2048 512→128", "linear", (2048, 512, 128)),
    Case("GPT-2 M=1024 768→3072", "linear", (1024, 768, 3072)),
    Case("M=64 768→3072", "linear", (64, 768, 3072)),
    Case("ViT-B MLP M=6304 768→3072", "linear", (6304, 768, 3072)),
    Case("ResNet18 conv1 7×7/2 3→64 @112 b8", "conv", (8, 3, 64, 112, 7, 2)),
    Case("ResNet18 layer1 3×3 64→64 @56 b8", "conv", (8, 64, 64, 56, 3, 1)),
    Case("ResNet18 layer4 3×3 512→512 @7 b8", "conv", (8, 512, 512, 7, 3, 1)),
]
GPU_CASES = [
    Case("per-call M=8 16→16", "linear", (8, 16, 16)),
    Case("ViT-B MLP M=6304 768→3072", "linear", (6304, 768, 3072)),
    Case("ViT-L MLP M=6304 1024→4096", "linear", (6304, 1024, 4096)),
    Case("ViT-H MLP M=8224 1280→5120", "linear", (8224, 1280, 5120)),
    Case("ResNet18 layer1 3×3 64→64 @56 b64", "conv", (64, 64, 64, 56, 3, 1)),
]


def _freeze_base(module: nn.Module, base: nn.Module) -> nn.Module:
    base.weight.requires_grad_(False)
    base.bias.requires_grad_(False)
    return module


def build(provider: str, case: Case, device, dtype):
    """The module one provider trains: masked providers train only the logits."""
    plain = case.make_plain(device, dtype)
    if provider == "plain":
        plain.bias.requires_grad_(False)
        return plain
    if provider in ("eager", "compile"):
        module = eager_composite(plain, init=MASK_INIT, beta=BETA)
        return torch.compile(module) if provider == "compile" else module
    if provider == "neurosurgeon":
        from NeuroSurgeon.Masking.contsparse_layer import ContSparseConv2d, ContSparseLinear

        if case.kind == "linear":
            module = ContSparseLinear.from_layer(plain, mask_init_value=MASK_INIT)
        else:
            # ContSparseConv2d.from_layer raises AttributeError in neurosurgeon 0.1.0;
            # build it directly and attach the layer's parameters as from_layer means to.
            module = ContSparseConv2d(plain.in_channels, plain.out_channels, plain.kernel_size,
                                      padding=plain.padding, stride=plain.stride,
                                      dilation=plain.dilation, groups=plain.groups,
                                      mask_init_value=MASK_INIT)
            module.weight, module.bias = plain.weight, plain.bias
        module = module.to(device)
        module.temperature = BETA
        module.train(True)
        return _freeze_base(module, module)
    if provider == "ours":
        cls = sf.nn.MaskedLinear if case.kind == "linear" else sf.nn.MaskedConv2d
        module = cls.from_module(plain, init=MASK_INIT, beta=BETA)
        module.bias.requires_grad_(False)
        return module
    raise ValueError(f"unknown provider {provider!r}")


def neurosurgeon_available() -> bool:
    try:
        import NeuroSurgeon.Masking.contsparse_layer  # noqa: F401
    except Exception:  # its import pulls in transformers/matplotlib; any failure = absent
        return False
    return True


def run_case(case: Case, providers, device, dtype, rec: harness.Recorder, budget_s: float):
    x = case.make_input(device, dtype).requires_grad_()
    modules = {p: build(p, case, device, dtype) for p in providers}
    with torch.no_grad():
        grad_out = torch.randn_like(modules["plain"](x))
    pending = {}

    def timed(provider, mode):
        module = modules[provider]
        params = [p for p in module.parameters() if p.requires_grad]

        def clear():
            x.grad = None
            for p in params:
                p.grad = None

        def forward_then_clear():
            clear()
            pending[provider] = module(x)

        if mode == "fwd":
            return (lambda: module(x)), clear
        if mode == "bwd":
            return (lambda: pending[provider].backward(grad_out)), forward_then_clear
        return (lambda: module(x).backward(grad_out)), clear

    stats = {}
    for mode in ("fwd", "bwd", "full"):
        cases = {p: timed(p, mode) for p in providers}
        if device.type == "cuda":
            stats[mode] = {p: harness.time_gpu(*cases[p]) for p in providers}
        else:
            stats[mode] = harness.time_round_robin(cases, budget_s=budget_s)
        pending.clear()

    results = {}
    for provider, module in modules.items():
        owned = [x, *module.parameters(), *module.buffers()]
        saved = saved_bytes(lambda: module(x), owned).total
        weight_numel = case.make_plain("meta", dtype).weight.numel()
        saved_per_weight = 0.0 if provider == "plain" else saved / weight_numel
        for mode in ("fwd", "bwd", "full"):
            rec.add(case.name, provider, mode, "ms", stats[mode][provider])
        rec.add(case.name, provider, "full", "saved_bytes_per_weight",
                harness.Stats(saved_per_weight, saved_per_weight, saved_per_weight))
        results[provider] = (stats["fwd"][provider].p50, stats["bwd"][provider].p50,
                             stats["full"][provider].p50, saved_per_weight)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_args(parser, budget_s=4.0)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: float32 on cpu, bfloat16 on cuda")
    parser.add_argument("--cases", default=None, help="comma-separated substrings of case names")
    parser.add_argument("--providers", default="plain,eager,neurosurgeon,compile,ours")
    args = parser.parse_args(argv)
    device = harness.device_from_args(parser, args)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    cases = GPU_CASES if device.type == "cuda" else CPU_CASES
    cases = harness.select_cases(cases, args.cases)
    providers = [p.strip() for p in args.providers.split(",")]
    if "neurosurgeon" in providers and not neurosurgeon_available():
        print("note: NeuroSurgeon is not installed (pip install neurosurgeon); its column is skipped")
        providers.remove("neurosurgeon")
    if "plain" not in providers:
        providers.insert(0, "plain")

    def run():
        print(f"device: {harness.device_name(device)}, dtype {dtype}, torch {torch.__version__}, "
              f"beta {BETA}; medians of fwd / bwd / fwd+bwd in ms\n")
        rec = harness.Recorder("masked_layers", device, dtype=str(dtype).removeprefix("torch."),
                               config=harness.run_config(device))
        header = ["shape", "provider", "fwd ms", "bwd ms", "full ms", "full / floor",
                  "saved B/weight"]
        rows = []
        for case in cases:
            results = run_case(case, providers, device, dtype, rec, args.budget)
            floor = results["plain"][2]
            for provider, (fwd, bwd, full, saved) in results.items():
                rows.append([case.name, provider, f"{fwd:.3f}", f"{bwd:.3f}", f"{full:.3f}",
                             f"{full / floor:.3f}", f"{saved:.0f}" if provider != "plain" else "-"])
            print(harness.markdown_table(header, rows[-len(results):]), flush=True)
            print()
        path = harness.append_csv(rec, args.csv)
        print(f"## all cases ({harness.device_name(device)})\n")
        print(harness.markdown_table(header, rows))
        print(f"\nrows appended to {path}\n")

    harness.run_at_thread_counts(device, args, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
