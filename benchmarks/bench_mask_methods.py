"""The mask methods' masked linear, forward + backward, side by side in one process.

For each method (continuous sparsification, hard-concrete, Gumbel straight-through):

  plain       F.linear training its weight (the floor: the same three GEMMs, no mask)
  ours        sf.masked_linear in the method's training mode with the fused kernels
              (CPU: the compiled C++ mask pass; the sampled modes regenerate their noise
              from a 16-byte key in backward)
  reference   the same call with the eager kernels (sf.use_kernels("eager"): the same
              math and counter-based noise as torch ops, differentiated by PyTorch) —
              whether compiling the mask pass pays
  eager       the composite users write today (NeuroSurgeon's pattern): noise drawn with
              torch.rand, mask formed with autograd ops, F.linear — keeps W_eff, the mask
              and the noise for backward

Prints ms, the ratio to plain and the bytes saved for backward per weight.

    python -m benchmarks.bench_mask_methods --threads 1,2
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import subind_fast as sf
from subind_fast.testing.memory import saved_bytes

from . import harness

STRETCH = 0.1
SHAPES = {"tiny GPT-2 MLP 128→512, M=64": (64, 128, 512),
          "GPT-2 MLP 768→3072, M=64": (64, 768, 3072)}
MODES = {"continuous": "soft", "hard_concrete": "concrete", "gumbel": "gumbel"}


def eager_mask(logits, beta, mode):
    if mode == "soft":
        return torch.sigmoid(beta * logits)
    u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    y = torch.sigmoid(beta * (logits + torch.log(u) - torch.log1p(-u)))
    if mode == "concrete":
        return (y * (1 + 2 * STRETCH) - STRETCH).clamp(0, 1)
    return (y > 0.5).to(y.dtype) + y - y.detach()


def providers(x, w, s, beta, mode):
    key = torch.tensor([1, 0]) if mode != "soft" else None
    beta_t = torch.tensor(beta)

    def ours():
        sf.masked_linear(x, w, s, beta_t, None, mode, key).sum().backward()

    def reference():
        with sf.use_kernels("eager"):
            ours()

    w_plain = w.detach().clone().requires_grad_()
    return {
        "plain": lambda: F.linear(x, w_plain).sum().backward(),
        "ours": ours,
        "reference": reference,
        "eager": lambda: F.linear(x, w * eager_mask(s, beta, mode)).sum().backward(),
    }


def saved_per_weight(fn_forward, owned, numel):
    return saved_bytes(fn_forward, owned).total / numel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_args(parser, budget_s=3.0)
    args = parser.parse_args(argv)
    device = harness.device_from_args(parser, args)
    if device.type != "cpu":
        parser.error("this bench runs on the CPU (the sampled masks use the reference backend "
                     "on CUDA)")

    def run():
        rec = harness.Recorder("mask-methods", device, dtype="float32",
                               config=harness.run_config(device))
        print(f"device: {harness.device_name(device)}, torch {torch.__version__}; fp32 masked "
              "linear forward+backward (x and the logits need gradients)\n")
        rows = []
        for shape_name, (m, k, n) in SHAPES.items():
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(m, k, generator=gen).requires_grad_()
            w = torch.randn(n, k, generator=gen)
            s = (torch.randn(n, k, generator=gen) * 0.1).requires_grad_()
            for method, mode in MODES.items():
                beta = 1.5 if method == "hard_concrete" else 1.0
                cases = {name: (fn, None) for name, fn in providers(x, w, s, beta, mode).items()}
                stats = harness.time_round_robin(cases, min_repeats=5, budget_s=args.budget)
                key = torch.tensor([1, 0]) if mode != "soft" else None
                saved = {
                    "plain": saved_per_weight(lambda: F.linear(x, w), [x, w], w.numel()),
                    "ours": saved_per_weight(
                        lambda: sf.masked_linear(x, w, s, torch.tensor(beta), None, mode, key),
                        [x, w, s], w.numel()),
                    "eager": saved_per_weight(lambda: F.linear(x, w * eager_mask(s, beta, mode)),
                                              [x, w, s], w.numel()),
                }
                with sf.use_kernels("eager"):
                    saved["reference"] = saved_per_weight(
                        lambda: sf.masked_linear(x, w, s, torch.tensor(beta), None, mode, key),
                        [x, w, s], w.numel())
                for name, st in stats.items():
                    rec.add(shape_name, f"{method}/{name}", "fwd+bwd", "ms", st)
                    rows.append([shape_name, method, name, f"{st.p50:.3f}",
                                 f"{st.p50 / stats['plain'].p50:.3f}", f"{saved[name]:.2f}"])
        print(harness.markdown_table(["shape", "method", "provider", "fwd+bwd ms", "× plain",
                                      "saved B/weight"], rows))
        path = harness.append_csv(rec, args.csv)
        print(f"\nrows appended to {path}")

    harness.run_at_thread_counts(device, args, run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
