"""The CPU loops under each vector capability this machine runs (default =
baseline x86-64, avx2, avx512; csrc/cpu/loops), on one thread.

The capability is chosen once per process (SUBIND_CPU_CAPABILITY), so each
round starts one worker process per capability, in rotating order, and every
kernel's time is the median over rounds of each worker's median:

  mask fwd <dtype>   W_eff = θ ⊙ σ(β·s) over 4M weights (fp32 logits)
  mask bwd fp32      ∂s, ∂θ and W_eff from ∂W_eff over 4M weights
  linear M=64        masked_linear forward + backward, 768→3072, fp32 (the blocked schedule)
  adamw fp32         the frozen-mask AdamW step over 4M parameters (10 % frozen)

    python -m benchmarks.bench_cpu_capabilities [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from . import harness

OVERRIDE = "SUBIND_CPU_CAPABILITY"
N = 4_000_000


def _kernels() -> dict:
    """name -> (fn, setup) on fixed random inputs."""
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(N, generator=gen)
    logits = torch.randn(N, generator=gen)
    grad = torch.randn(N, generator=gen)
    beta = torch.tensor(5.0)
    ops = torch.ops.subind
    cases = {}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16),
                        ("bf16", torch.bfloat16)):
        weight = theta.to(dtype)
        cases[f"mask fwd {name}"] = (
            lambda weight=weight: ops.mask_weight(weight, logits, beta, "soft", None), None)
    cases["mask bwd fp32"] = (lambda: ops.mask_weight_backward(
        grad, theta, logits, beta, "soft", True, True, True, None), None)

    x = torch.randn(64, 768, generator=gen)
    w = torch.randn(3072, 768, generator=gen) * 0.02
    s = torch.randn(3072, 768, generator=gen).requires_grad_()
    upstream = torch.randn(64, 3072, generator=gen)

    def linear():
        y = ops.masked_linear(x, w, s, None, beta, "soft", None)
        y.backward(upstream)

    cases["linear M=64 768→3072 fwd+bwd"] = (linear, None)

    param, g = theta.clone(), grad.clone()
    m, v = torch.zeros(N), torch.zeros(N)
    frozen = (torch.rand(N, generator=gen) < 0.1)
    from subind_fast.bits import pack_bits

    bits = pack_bits(frozen)
    cases["adamw fp32 (10 % frozen)"] = (lambda: ops.adamw_step(
        param, g, m, v, torch.empty(0), bits, 1e-3, 0.9, 0.999, 1e-8, 0.01, 1e-3, 1.0), None)
    return cases


def worker() -> None:
    """One process, one capability: each kernel's median (ms) as JSON."""
    import subind_fast as sf

    torch.set_num_threads(1)
    running = sf.backend_info()["cpu_capability"]["running"]
    stats = harness.time_round_robin(_kernels(), budget_s=2.0)
    print(json.dumps({"capability": running, "ms": {k: s.p50 for k, s in stats.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--csv", default=str(harness.DEFAULT_CSV))
    args = parser.parse_args()
    if args.worker:
        return worker()
    import subind_fast as sf

    runnable = list(sf.backend_info()["cpu_capability"]["runnable"])
    samples: dict[str, dict[str, list[float]]] = {c: {} for c in runnable}
    for r in range(args.rounds):
        order = runnable[r % len(runnable):] + runnable[:r % len(runnable)]
        for capability in order:
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_cpu_capabilities",
                                  "--worker"], env={**os.environ, OVERRIDE: capability},
                                 capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            assert result["capability"] == capability, result
            for kernel, ms in result["ms"].items():
                samples[capability].setdefault(kernel, []).append(ms)
    torch.set_num_threads(1)
    recorder = harness.Recorder("cpu_capabilities", torch.device("cpu"), dtype="mixed",
                                config=f"rounds={args.rounds}")
    kernels = list(samples[runnable[0]])
    rows = []
    for kernel in kernels:
        medians = {c: harness.Stats.of(samples[c][kernel]) for c in runnable}
        for c in runnable:
            recorder.add(kernel, c, "", "ms", medians[c])
        base = medians["default"].p50
        rows.append([kernel] + [f"{medians[c].p50:.3g}" + ("" if c == "default" else
                                                         f" ({base / medians[c].p50:.1f}×)")
                                for c in runnable])
    print(f"device: {harness.device_name(torch.device('cpu'))}, torch {torch.__version__}; "
          f"median ms over {args.rounds} rounds (× faster than default)")
    print(harness.markdown_table(["kernel"] + runnable, rows))
    harness.append_csv(recorder, Path(args.csv))
    print(f"rows appended to {args.csv}")


if __name__ == "__main__":
    main()
