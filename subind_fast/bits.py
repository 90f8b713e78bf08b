"""1-bit storage of binary masks: element i of the flattened mask is bit
(i mod 8) of byte ⌊i/8⌋, least significant bit first (the layout the fused
optimizer kernels read, csrc/include/subind/optim_math.h)."""
from __future__ import annotations

import torch
from torch import Tensor

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def packed_size(numel: int) -> int:
    return (numel + 7) // 8


def pack_bits(mask: Tensor) -> Tensor:
    """A bool tensor → its packed uint8 bytes (1-D, ⌈numel/8⌉ long)."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"pack_bits needs a bool tensor, got "
                        f"{mask.dtype if isinstance(mask, Tensor) else type(mask).__name__}")
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) << _SHIFTS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape) -> Tensor:
    """Packed bytes → a bool tensor of ``shape``."""
    shape = torch.Size(shape)
    numel = shape.numel()
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_size(numel):
        raise ValueError(f"packed mask for shape {tuple(shape)} must be {packed_size(numel)} uint8 "
                         f"bytes, got {packed.numel()} of {packed.dtype}")
    bits = (packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 1
    return bits.reshape(-1)[:numel].bool().view(shape)


_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)


def count_ones(packed: Tensor) -> int:
    """Number of set bits (padding bits are always 0)."""
    return int(_POPCOUNT.to(packed.device)[packed.long()].sum())
