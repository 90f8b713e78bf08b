"""Frozen-update optimizer steps, side by side in one process (issue: subnetworks).

  ours            subind_fast.MaskedAdamW: one fused pass per parameter reading 1-bit masks
  eager-forloop   torch.optim.AdamW(foreach=False) + the correct eager pattern: zero the
                  frozen gradient entries (what a gradient hook does), step, then restore
                  the frozen weights from a saved copy
  eager-foreach   the same with foreach=True
  eager-fused     the same with fused=True

(The eager pattern still lets AdamW's moment estimates of frozen entries decay; only ours
keeps them bit-identical.)  Parameter sets: ViT-B (~86M) and a tiny GPT-2 (the arithmetic
experiment's 2-layer model); 10% of every matrix frozen.  Prints the median step time,
the ratio to ours, bytes per parameter moved per step on a GPU floor, and mask storage.

    python -m benchmarks.bench_optim
    python -m benchmarks.bench_optim --device cuda
"""
from __future__ import annotations

import argparse

import torch

import subind_fast as sf
from subind_fast.bits import pack_bits

from . import harness

FROZEN_FRACTION = 0.1
# fp32 AdamW reads p, g, m, v and writes p, m, v: 28 bytes; plus 1 bit of mask.
FLOOR_BYTES_PER_PARAM = 28.125


def vit_b_shapes():
    d, mlp = 768, 3072
    block = [(3 * d, d), (3 * d,), (d, d), (d,), (mlp, d), (mlp,), (d, mlp), (d,), (d,), (d,),
             (d,), (d,)]
    return [(d, 3, 16, 16), (d,), (1, 197, d), (1, 1, d)] + block * 12 + [(d,), (d,), (1000, d),
                                                                          (1000,)]


def tiny_gpt2_shapes():
    d, inner, vocab = 128, 512, 1003
    block = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, inner), (inner,),
             (inner, d), (d,)]
    return [(vocab, d), (16, d)] + block * 2 + [(d,), (d,)]


PARAM_SETS = {"ViT-B (86M)": vit_b_shapes, "tiny GPT-2 (2 layers)": tiny_gpt2_shapes}


def make_params(shapes, device):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in shapes]
    masks = [(torch.rand(s, generator=gen) < FROZEN_FRACTION).to(device) if len(s) >= 2 else None
             for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    return params, masks


def ours(params, masks):
    frozen = {p: pack_bits(m.cpu()).to(p.device) for p, m in zip(params, masks) if m is not None}
    opt = sf.MaskedAdamW(params, frozen=frozen, lr=1e-3, weight_decay=0.01)
    return opt.step


def eager(params, masks, **flags):
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, **flags)
    pairs = [(p, m, p.detach()[m].clone()) for p, m in zip(params, masks) if m is not None]
    free = [(p, (~m).to(p.dtype)) for p, m in zip(params, masks) if m is not None]

    def step():
        for p, keep in free:       # the gradient hook: frozen entries get no gradient
            p.grad.mul_(keep)
        opt.step()
        with torch.no_grad():      # restore the frozen weights that decay moved
            for p, m, saved in pairs:
                p[m] = saved
    return step


PROVIDERS = {
    "ours": ours,
    "eager-forloop": lambda p, m: eager(p, m, foreach=False),
    "eager-foreach": lambda p, m: eager(p, m, foreach=True),
    "eager-fused": lambda p, m: eager(p, m, fused=True),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.add_common_args(parser, budget_s=6.0)
    args = parser.parse_args(argv)
    device = harness.device_from_args(parser, args)

    def run():
        rec = harness.Recorder("optim", device, dtype="float32", config=harness.run_config(device))
        print(f"device: {harness.device_name(device)}, torch {torch.__version__}; AdamW fp32, "
              f"{FROZEN_FRACTION:.0%} of each matrix frozen; median step time\n")
        rows = []
        for set_name, shapes_fn in PARAM_SETS.items():
            shapes = shapes_fn()
            numel = sum(torch.Size(s).numel() for s in shapes)
            steps = {}
            for name, build in PROVIDERS.items():
                params, masks = make_params(shapes, device)
                steps[name] = (build(params, masks), None)
            if device.type == "cuda":
                stats = {n: harness.time_gpu(fn) for n, (fn, _) in steps.items()}
            else:
                stats = harness.time_round_robin(steps, min_repeats=5, budget_s=args.budget)
            for name, st in stats.items():
                rec.add(set_name, name, "step", "ms", st)
                speedup = stats["eager-forloop"].p50 / st.p50  # how much faster than the for-loop
                achieved = FLOOR_BYTES_PER_PARAM * numel / (st.p50 * 1e-3) / 1e9
                rows.append([set_name, f"{numel / 1e6:.2f}M", name, f"{st.p50:.2f}",
                             f"{st.p50 / stats['ours'].p50:.2f}", f"{speedup:.2f}", f"{achieved:.1f}"])
        print(harness.markdown_table(
            ["parameters", "size", "provider", "step ms", "time / ours", "× vs eager-forloop",
             "GB/s at 28.125 B/param"], rows))
        print("\nmask storage per weight: ours 1 bit (0.125 B); bool mask 1 B (8 bits); "
              "float mask 4 B (32 bits)")
        path = harness.append_csv(rec, args.csv)
        print(f"rows appended to {path}")

    harness.run_at_thread_counts(device, args, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
