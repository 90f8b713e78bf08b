"""`subind plan-memory`: the GPU memory one discovery step needs, per rank,
and the largest batch that fits — for the fused layers, the eager composite
and torch.compile — without a GPU (engine/memory_plan.py).

    subind plan-memory --model timm:vit_large_patch16_224 --batch 64 --dtype bf16 \\
        --checkpoint --world-size 8 --strategy fsdp2 --gpu-mem 80
"""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from .engine import memory_plan as mp
from .engine.cli import int_list, str_list
from .engine.distributed import STRATEGIES, blocks_of
from .engine.models import HF_CLASSES, build_model, input_size, parse_kwargs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def register(subparsers) -> None:
    p = subparsers.add_parser("plan-memory", help="memory of a discovery step, without a GPU",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="timm:NAME, hf:DIR or entry:MODULE:FUNCTION "
                                                  "(built on the meta device: no weights)")
    p.add_argument("--hf-class", default="causal-lm", choices=sorted(HF_CLASSES))
    p.add_argument("--model-kwargs", help="JSON keyword arguments for the model")
    p.add_argument("--batch", type=int, required=True, help="per rank")
    p.add_argument("--input-shape", type=int_list,
                   help="one sample's shape, e.g. 3,224,224 (default: the model's input size; "
                        "token models: --seq-len tokens)")
    p.add_argument("--seq-len", type=int,
                   help="tokens per sample of a token model (default: its maximum length, "
                        "at most 1024)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                   help="storage of the frozen weights and activations (logits stay fp32)")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing per block")
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--strategy", choices=STRATEGIES, default="none")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU")
    p.add_argument("--include", action="append")
    p.add_argument("--exclude", action="append")
    p.add_argument("--blocks", help="glob naming the blocks (default: blocks/layers/h/stages)")
    p.add_argument("--providers", type=str_list, default=list(mp.PROVIDERS))
    p.set_defaults(handler=run)


def _positions(model) -> Optional[int]:
    config = getattr(model, "config", None)
    return next((getattr(config, name) for name in ("max_position_embeddings", "n_positions")
                 if isinstance(getattr(config, name, None), int)), None)


def _input_maker(model, args, dtype):
    tokens = getattr(model, "main_input_name", None) == "input_ids"  # transformers LMs
    if args.seq_len is not None and not tokens:
        raise ValueError(f"--seq-len is for token models; {args.model} takes "
                         f"{getattr(model, 'main_input_name', 'tensors')} (use --input-shape)")
    if args.input_shape:
        shape = tuple(args.input_shape)
    elif tokens:
        most = _positions(model)
        length = args.seq_len or min(most or 1024, 1024)
        if length < 1 or (most is not None and length > most):
            raise ValueError(f"--seq-len must be in [1, {most}] for {args.model} (its "
                             f"positions), got {length}")
        return lambda b: torch.zeros(b, length, dtype=torch.long, device="meta")
    else:
        shape = input_size(model)
        if shape is None:
            raise ValueError(f"{args.model}: give --input-shape (no input size known)")
    return lambda b: torch.randn(b, *shape, dtype=dtype, device="meta")


def _check(args) -> None:
    if args.batch < 1 or args.world_size < 1 or args.gpu_mem <= 0:
        raise ValueError("--batch and --world-size must be >= 1 and --gpu-mem > 0")
    if (args.world_size > 1) != (args.strategy != "none"):
        raise ValueError("--world-size > 1 needs --strategy ddp or fsdp2 (and they need > 1)")
    unknown = sorted(set(args.providers) - set(mp.PROVIDERS))
    if unknown:
        raise ValueError(f"--providers: unknown {unknown}; choose from {list(mp.PROVIDERS)}")


def run(args, argv=None) -> int:
    _check(args)
    dtype = DTYPES[args.dtype]
    kwargs = parse_kwargs(args.model_kwargs)

    def build():
        return build_model(args.model, "random" if not args.model.startswith("entry:") else None,
                           args.hf_class, kwargs)

    with torch.device("meta"):
        probe = build()
    spec = mp.PlanInputs(build=build, make_input=_input_maker(probe, args, dtype), dtype=dtype,
                         include=args.include, exclude=args.exclude,
                         blocks=lambda m: blocks_of(m, args.blocks), checkpoint=args.checkpoint,
                         world_size=args.world_size, strategy=args.strategy)
    budget = int(args.gpu_mem * mp.GIB)
    weights = sum(p.numel() for p in probe.parameters())
    print(f"{args.model}: {weights / 1e6:,.0f} M parameters; batch {args.batch} per rank, "
          f"{args.dtype} weights, fp32 logits + Adam, "
          f"{'activation checkpointing, ' if args.checkpoint else ''}"
          f"{args.strategy if args.strategy != 'none' else 'one GPU'}"
          f"{f' × {args.world_size}' if args.world_size > 1 else ''}, {args.gpu_mem:g} GiB")
    header = ("provider", "static GiB", "activations GiB", "peak GiB", "fits", "largest batch")
    rows = []
    for provider in args.providers:
        best, usage, grads = mp.largest_batch(provider, spec, budget, args.batch)
        peak = usage.peak(grads)
        rows.append((provider, f"{usage.static / mp.GIB:.1f}",
                     f"{usage.activations / mp.GIB:.1f}", f"{peak / mp.GIB:.1f}",
                     "yes" if peak <= budget else "no", str(best)))
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))
    return 0
