"""What autograd keeps for backward: every tensor a forward saves, seen
through ``torch.autograd.graph.saved_tensors_hooks``, each storage counted
once and the given (owned) tensors' storage not at all.  The memory tests,
the benchmarks and `subind plan-memory` measure with this one probe; it works
on the meta device too (storages are told apart by identity, not address)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn


def _storage_key(t: Tensor) -> int:
    # The StorageImpl's identity: unique while the storage lives, and autograd
    # keeps every storage counted here alive for the whole forward.  A plain
    # int, because dynamo copies the hook's closure.
    return t.untyped_storage()._cdata


@dataclass
class Saved:
    """Bytes one forward keeps for backward beyond the owned tensors."""
    total: int                     # every saved storage, once
    largest: int                   # the largest single one
    output: object = None          # what the forward returned
    block_inputs: int = 0          # Σ over ``blocks`` of their inputs' bytes
    block_saved: list = field(default_factory=list)  # each block's share of ``total``


def saved_bytes(run: Callable[[], object], owned: Iterable[Tensor] = (),
                blocks: Sequence[nn.Module] = ()) -> Saved:
    """Run ``run()`` and count what autograd saves that is not the storage of
    ``owned`` (inputs, parameters, buffers); per block of ``blocks`` too."""
    owned_keys = {_storage_key(t) for t in owned}
    seen, total, largest = set(), [0], [0]
    per_block, inputs = {}, {}

    def pack(t: Tensor):
        key = _storage_key(t)
        if key not in seen and key not in owned_keys:
            seen.add(key)
            size = t.untyped_storage().nbytes()
            total[0] += size
            largest[0] = max(largest[0], size)
        return t

    handles = []
    for i, block in enumerate(blocks):
        def before(module, args, i=i):
            per_block[i] = -total[0]
            inputs[i] = sum(a.untyped_storage().nbytes() for a in args if isinstance(a, Tensor))

        def after(module, args, output, i=i):
            per_block[i] += total[0]

        handles += [block.register_forward_pre_hook(before), block.register_forward_hook(after)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            output = run()
    finally:
        for handle in handles:
            handle.remove()
    return Saved(total[0], largest[0], output, sum(inputs.values()), list(per_block.values()))
