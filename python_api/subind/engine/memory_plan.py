"""Memory planning for discovery: how much GPU memory one training step of
mask discovery needs, and the largest batch that fits, without any GPU.

The model is built on the ``meta`` device (shapes only, no memory), masked,
and run forward once at batch 1 and once at batch 2 under
``torch.autograd.graph.saved_tensors_hooks``, which see every tensor autograd
keeps for backward.  What grows with the batch is activations; the rest is

  static  = frozen weights (stored dtype) + buffers
          + logits, their gradients and Adam's two moments (4 B each, fp32),

divided over the ranks under FSDP2 (plus the largest block gathered whole,
twice for prefetch), and with DDP's gradient buckets (one more fp32 copy of
the logits' gradients).  The peak of a step is

  static + max(saved activations, logits' gradients) + working set,

where the working set is twice the largest saved tensor (an activation and
its gradient live in backward) plus, for the composites, the weight-sized
gradients of W_eff and σ(βs) of the largest layer.  Three ways to run the
same masked model are planned:

* ``ours``     the fused masked layers (they keep no weight-sized tensor);
* ``eager``    the eager composite W_eff = θ ⊙ σ(β·s) as a parametrization
               (what NeuroSurgeon-style code does: σ and W_eff kept per layer);
* ``compile``  torch.compile of that composite with AOTAutograd's min-cut
               partitioner (Inductor's choice of what to save), run on meta
               tensors with the ``aot_eager_decomp_partition`` backend.

With activation checkpointing each block keeps only its input, and the
largest block's activations are rebuilt during backward (measured per block
from the same forward).  The tests check these numbers against PyTorch's own
MemTracker under FakeTensorMode on small models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

import subind_fast as sf
from subind_fast.testing.baselines import eager_composite
from subind_fast.testing.memory import saved_bytes

PROVIDERS = ("ours", "eager", "compile")
GIB = 2 ** 30


@dataclass
class Usage:
    """Bytes per rank of one provider at one batch size."""
    static: int
    activations: int
    working: int

    def peak(self, logits_grads: int) -> int:
        return self.static + max(self.activations, logits_grads) + self.working


@dataclass
class PlanInputs:
    build: Callable[[], nn.Module]           # called under torch.device("meta")
    make_input: Callable[[int], object]      # batch size → model input (meta)
    dtype: torch.dtype = torch.bfloat16
    include: Optional[list] = None
    exclude: Optional[list] = None
    blocks: Callable[[nn.Module], list] = lambda m: []
    checkpoint: bool = False
    world_size: int = 1
    strategy: str = "none"


def _model_for(provider: str, spec: PlanInputs) -> nn.Module:
    with torch.device("meta"):
        model = spec.build()
    if provider == "ours":
        sf.mask_model(model, include=spec.include, exclude=spec.exclude, check_coverage="off")
    else:
        eager_composite(model, spec.include, spec.exclude)
    return model.to(spec.dtype)  # the logits stay fp32 (masked layers and SoftMask alike)


def _forward(provider: str, model: nn.Module, spec: PlanInputs, batch: int) -> Callable:
    inputs = spec.make_input(batch)
    # A training step keeps no KV cache; a transformers LM builds one unless told.
    kwargs = ({"use_cache": False} if getattr(getattr(model, "config", None), "use_cache", None)
              is not None else {})
    if getattr(model, "main_input_name", None) == "input_ids":
        # transformers inspects a 2-D attention mask's values (and, without one,
        # the position ids): data-dependent branches that meta tensors cannot
        # take.  A ready 4-D causal mask is used as it is; expanded from one
        # L × L matrix it costs no memory per sample.
        length = inputs.shape[-1]
        kwargs["attention_mask"] = torch.ones(length, length, dtype=torch.bool,
                                              device=inputs.device).tril()[None, None].expand(
                                                  inputs.shape[0], 1, length, length)
    if provider == "compile":
        compiled = torch.compile(model, backend="aot_eager_decomp_partition", dynamic=False)

        def run():
            # The parametrization gives every layer its own class: one graph
            # each, more than dynamo's default limit of recompilations.
            with torch._dynamo.config.patch(cache_size_limit=4096):
                return _as_tensor(compiled(inputs, **kwargs))
        return run
    return lambda: _as_tensor(model(inputs, **kwargs))


def _as_tensor(out) -> Tensor:
    return getattr(out, "logits", out)


def _static(model: nn.Module, spec: PlanInputs) -> tuple[int, int, int]:
    """(static bytes per rank, bytes of the logits' gradients per rank, the
    largest block's parameters)."""
    logits = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    logit_bytes = sum(p.numel() * 4 for p in logits)
    weights = sum(p.numel() * p.element_size() for p in frozen)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    # weights, logits and Adam's two moments; the gradients are counted with
    # the activations (backward frees the one as it fills the other).
    shardable = weights + 3 * logit_bytes
    largest_block = max((sum(p.numel() * p.element_size() for p in b.parameters())
                         for b in spec.blocks(model)), default=0)
    grads = logit_bytes
    if spec.strategy == "fsdp2":
        shardable = -(-shardable // spec.world_size) + 2 * largest_block
        grads = -(-logit_bytes // spec.world_size)
    elif spec.strategy == "ddp":
        shardable += logit_bytes  # gradient buckets
    return shardable + buffers, grads, largest_block


def plan(provider: str, spec: PlanInputs, batch: int) -> tuple[Usage, int]:
    """(usage at ``batch`` per rank, the logits' gradient bytes) of ``provider``."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    model = _model_for(provider, spec)
    static, grads, _ = _static(model, spec)
    blocks = spec.blocks(model)
    if spec.checkpoint and not blocks:
        raise ValueError("--checkpoint: found no blocks to checkpoint (name them with --blocks)")
    saved = saved_bytes(_forward(provider, model, spec, batch),
                        [*model.parameters(), *model.buffers()], blocks)
    largest = saved.largest
    if provider != "ours":  # dW_eff (stored dtype) and dσ (fp32) of the largest masked weight
        widest = max((p.numel() for p in model.parameters() if p.requires_grad), default=0)
        largest += widest * (spec.dtype.itemsize + 4) // 2
    activations = saved.total
    if spec.checkpoint:  # each block keeps its input; one block is rebuilt at a time
        block_max = max(saved.block_saved)
        activations += saved.block_inputs + block_max - sum(saved.block_saved)
    return Usage(static, activations, 2 * largest), grads


def largest_batch(provider: str, spec: PlanInputs, memory_bytes: int, batch: int
                  ) -> tuple[int, Usage, int]:
    """The largest batch whose planned peak fits ``memory_bytes``, from the
    usage measured at ``batch`` and ``2·batch`` (activations grow linearly
    with the batch); also the usage at ``batch`` and the gradients' bytes."""
    at, grads = plan(provider, spec, batch)
    twice, _ = plan(provider, spec, 2 * batch)
    per_sample = max(1, (twice.peak(0) - at.peak(0)) // batch)
    fixed = at.peak(0) - per_sample * batch
    best = max(0, int((memory_bytes - fixed) // per_sample))
    while best > 0 and fixed + per_sample * best + max(0, grads - _grown(at, twice, batch,
                                                                      best)) > memory_bytes:
        best -= 1
    return best, at, grads


def _grown(at: Usage, twice: Usage, batch: int, new_batch: int) -> int:
    """Activation bytes at ``new_batch`` on the line through the two measurements."""
    return at.activations + (twice.activations - at.activations) * (new_batch - batch) // batch
