"""`subind plan-memory`: the GPU memory one discovery step needs, per rank,
and the largest batch that fits — for the fused layers, the eager composite
and torch.compile — without a GPU (engine/memory_plan.py).

    subind plan-memory --model timm:vit_large_patch16_224 --batch 64 --dtype bf16 \\
        --checkpoint-activations --world-size 8 --strategy fsdp2 --gpu-mem 80
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

from ..engine import memory_plan as mp
from ..engine.options import MISSING, Ints, JsonObject, Repeated, Strs
from ..engine.distributed import STRATEGIES, blocks_of
from ..engine.models import HF_CLASSES, build_model, input_size

HELP = "memory of a discovery step, without a GPU"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class PlanMemoryOptions:
    """The model (built on the meta device: no weights are read), the batch
    and how the discovery would run."""
    model: str = MISSING
    """timm:NAME, hf:DIR or entry:MODULE:FUNCTION"""
    batch: int = MISSING
    """samples per rank"""
    hf_class: Literal[tuple(sorted(HF_CLASSES))] = "causal-lm"
    """the transformers auto class of hf: models"""
    model_kwargs: JsonObject = field(default_factory=dict)
    """the model's keyword arguments as JSON"""
    input_shape: Optional[Ints] = None
    """one sample's shape, e.g. 3,224,224 (when left out: the model's input size; token models:
    --seq-len tokens)"""
    seq_len: Optional[int] = None
    """tokens per sample of a token model (when left out: its maximum length, at most 1024)"""
    dtype: Literal[tuple(DTYPES)] = "bf16"
    """storage of the frozen weights and activations (the logits stay fp32)"""
    checkpoint_activations: bool = False
    """activation checkpointing per block"""
    world_size: int = 1
    """ranks"""
    strategy: Literal[STRATEGIES] = "none"
    """ddp (replicated) or fsdp2 (sharded)"""
    gpu_mem: float = 80.0
    """GiB per GPU"""
    include: Repeated = field(default_factory=list)
    """glob on layer names to mask (repeatable)"""
    exclude: Repeated = field(default_factory=list)
    """glob on layer names to leave unmasked (repeatable)"""
    blocks: Optional[str] = None
    """glob naming the blocks (when left out: the children of blocks/layers/h/stages lists)"""
    providers: Strs = field(default_factory=lambda: list(mp.PROVIDERS))
    """whose discovery step to plan"""


OPTIONS = {"plan": PlanMemoryOptions}


def _positions(model) -> Optional[int]:
    config = getattr(model, "config", None)
    return next((getattr(config, name) for name in ("max_position_embeddings", "n_positions")
                 if isinstance(getattr(config, name, None), int)), None)


def _input_maker(model, args, dtype):
    tokens = getattr(model, "main_input_name", None) == "input_ids"  # transformers LMs
    if args.seq_len is not None and not tokens:
        raise ValueError(f"--seq-len is for token models; {args.model} takes "
                         f"{getattr(model, 'main_input_name', 'tensors')} (use --input-shape)")
    if args.input_shape and tokens:
        raise ValueError(f"--input-shape is for tensor models; {args.model} takes token ids "
                         "(give --seq-len)")
    if args.input_shape:
        shape = tuple(args.input_shape)
        if any(size < 1 for size in shape):
            raise ValueError(f"--input-shape sizes must be >= 1, got {list(shape)}")
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
    if args.batch < 1 or args.world_size < 1:
        raise ValueError("--batch and --world-size must be >= 1")
    if not (math.isfinite(args.gpu_mem) and args.gpu_mem > 0):
        raise ValueError(f"--gpu-mem must be a finite number of GiB > 0, got {args.gpu_mem}")
    if not args.providers:
        raise ValueError(f"--providers names none; choose from {list(mp.PROVIDERS)}")
    if (args.world_size > 1) != (args.strategy != "none"):
        raise ValueError("--world-size > 1 needs --strategy ddp or fsdp2 (and they need > 1)")
    unknown = sorted(set(args.providers) - set(mp.PROVIDERS))
    if unknown:
        raise ValueError(f"--providers: unknown {unknown}; choose from {list(mp.PROVIDERS)}")


def run(parsed, argv=None) -> int:
    args = parsed.options
    _check(args)
    dtype = DTYPES[args.dtype]
    kwargs = args.model_kwargs

    def build():
        return build_model(args.model, "random" if not args.model.startswith("entry:") else None,
                           args.hf_class, kwargs)

    with torch.device("meta"):
        probe = build()
    spec = mp.PlanInputs(build=build, make_input=_input_maker(probe, args, dtype), dtype=dtype,
                         include=args.include or None, exclude=args.exclude or None,
                         blocks=lambda m: blocks_of(m, args.blocks),
                         checkpoint=args.checkpoint_activations,
                         world_size=args.world_size, strategy=args.strategy)
    budget = int(args.gpu_mem * mp.GIB)
    weights = sum(p.numel() for p in probe.parameters())
    print(f"{args.model}: {weights / 1e6:,.0f} M parameters; batch {args.batch} per rank, "
          f"{args.dtype} weights, fp32 logits + Adam, "
          f"{'activation checkpointing, ' if args.checkpoint_activations else ''}"
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
