"""Model-level APIs on sharded parameters (FSDP2's ``fully_shard`` turns each
parameter into a DTensor holding one shard per rank).

Inside a forward FSDP2 hands our kernels whole (unsharded) plain tensors, so
the masked layers need nothing.  Outside it — the L0 penalty, densities, hard
masks, optimizers — a parameter is a DTensor, and our custom ops, bit packing
and counting need either this rank's shard or the whole tensor:

* the L0 penalty Σσ(β·s) is the sum of each rank's shard sum.  Its value is
  all-reduced, but its gradient β·m(1−m) is local to the shard and goes
  straight into the sharded parameter's gradient (not through FSDP's
  reduce-scatter, which averages over ranks: every rank adds the same
  penalty, so averaging would be right too, but local is exact and free);
* counts (density) are local counts all-reduced;
* hard masks are gathered whole (one layer at a time, as bool);
* the frozen-update optimizers step each rank's shard with the bits of that
  shard (:func:`local_shard`).

Plain tensors pass through every helper unchanged, so callers need no branch.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _dtensor_class():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return None
    return DTensor


def is_sharded(tensor: Tensor) -> bool:
    cls = _dtensor_class()
    return cls is not None and isinstance(tensor, cls)


def is_fsdp_class(cls: type) -> bool:
    """Whether ``cls`` is one of the classes ``fully_shard`` creates."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return issubclass(cls, FSDPModule)


def reshard(model) -> None:
    """Drop every unsharded copy FSDP2 still holds (the root keeps its
    parameters gathered after a forward), so that the next forward gathers
    the shards again — needed after writing into sharded parameters outside
    a forward (resetting or loading logits).  No-op without FSDP2."""
    for module in model.modules():
        if is_fsdp_class(type(module)):
            module.reshard()


def local(tensor: Tensor) -> Tensor:
    """This rank's shard (differentiable), or the tensor itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def whole(tensor: Tensor) -> Tensor:
    """The whole tensor on every rank (a gather for a DTensor)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def _all_reduce_sum(value: Tensor, like: Tensor) -> Tensor:
    import torch.distributed as dist

    group = like.device_mesh.get_group()
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total


def shard_sum(local_value: Tensor, like: Tensor) -> Tensor:
    """Σ over ranks of ``local_value`` (computed from ``like``'s shard).  The
    value is the global sum; the gradient flows only into this rank's shard."""
    if not is_sharded(like):
        return local_value
    total = _all_reduce_sum(local_value, like)
    return local_value + (total - local_value.detach())


def count_positive(tensor: Tensor) -> int:
    """Number of entries > 0 over the whole (possibly sharded) tensor."""
    count = (local(tensor.detach()) > 0).sum()
    if is_sharded(tensor):
        count = _all_reduce_sum(count, tensor)
    return int(count)


def local_shard(full: Tensor, like: Tensor) -> Tensor:
    """The part of ``full`` (shaped like the whole of ``like``) that this
    rank's shard of ``like`` holds; ``full`` itself when ``like`` is plain."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    if full.shape != like.shape:
        raise ValueError(f"a tensor of shape {tuple(full.shape)} cannot be sharded like a "
                         f"parameter of shape {tuple(like.shape)}")
    carrier = full.to(torch.uint8) if full.dtype == torch.bool else full
    shard = distribute_tensor(carrier.to(like.device), like.device_mesh, like.placements)
    shard = shard.to_local()
    return shard.bool() if full.dtype == torch.bool else shard
