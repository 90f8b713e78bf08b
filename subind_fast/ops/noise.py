"""Counter-based noise for the sampled mask methods (hard-concrete and
Gumbel-sigmoid), and the keys that name a draw.

A draw is named by a *noise key*: an int64 tensor ``[seed, stream]`` on the
logits' device.  Element ``i`` of the draw gets the uniform

    h = mix(mix(k ⊕ lo32(i)) ⊕ hi32(i)),   k = mix(mix(mix(lo32(seed)) ⊕ hi32(seed)) ⊕ lo32(stream))
    u = (⌊h / 2⁸⌋ + ½) · 2⁻²⁴                 ∈ (0, 1), never 0 or 1

with ``mix`` the 32-bit integer hash x ← x ⊕ x≫16; x ← x·0x7feb352d; x ← x ⊕ x≫15;
x ← x·0x846ca68b; x ← x ⊕ x≫16 (mod 2³²), and the logistic noise
L = log u − log(1 − u) (the difference of two Gumbel samples: Csordás et al.'s
log(log U₁ / log U₂) has this law).  Because the noise is a pure function of
(key, i), backward regenerates exactly the forward's noise from the 16-byte
key: nothing weight-sized is stored, on any backend, and the C++ kernels
(csrc/include/subind/mask_math.h) compute bit-for-bit the same u.

``i`` is the element's offset in memory order of the (dense) logits as the op
receives them, so a transposed view (GPT-2's Conv1D) draws the same noise per
stored element as its untransposed original.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .modes import mode as mode_of

_LOW32 = 0xFFFFFFFF
_M1, _M2 = 0x7FEB352D, 0x846CA68B


def _mix(x: Tensor) -> Tensor:
    """The 32-bit hash on int64 tensors holding values in [0, 2³²).  Products
    exceed int64 and wrap; their low 32 bits, which are all that is kept,
    are exact."""
    x = x ^ (x >> 16)
    x = (x * _M1) & _LOW32
    x = x ^ (x >> 15)
    x = (x * _M2) & _LOW32
    return x ^ (x >> 16)


def _lo(x: Tensor) -> Tensor:
    return x & _LOW32


def _hi(x: Tensor) -> Tensor:
    # int64 >> is arithmetic; the mask keeps the bit pattern of an unsigned shift.
    return (x >> 32) & _LOW32


def key_hash(key: Tensor) -> Tensor:
    """k of the module doc: a 0-d int64 tensor from the key [seed, stream]."""
    seed, stream = key[0], key[1]
    return _mix(_mix(_mix(_lo(seed)) ^ _hi(seed)) ^ _lo(stream))


def element_offsets(logits: Tensor) -> Tensor:
    """Each element's offset in the memory order of a dense ``logits`` (its
    logical index when contiguous), as int64 shaped like it."""
    flat = torch.arange(logits.numel(), device=logits.device, dtype=torch.int64)
    if logits.is_contiguous():
        return flat.view(logits.shape)
    return flat.as_strided(logits.shape, logits.stride())


def uniform(key: Tensor, offsets: Tensor, dtype: torch.dtype) -> Tensor:
    """u ∈ (0, 1) for each offset (module doc), in ``dtype``."""
    k = key_hash(key.to(device=offsets.device))
    h = _mix(_mix(k ^ _lo(offsets)) ^ _hi(offsets))
    return ((h >> 8).to(dtype) + 0.5) * (2.0 ** -24)


def logistic(key: Tensor, offsets: Tensor, dtype: torch.dtype) -> Tensor:
    """L = log u − log(1 − u), the logistic noise of element ``offsets``."""
    u = uniform(key, offsets, dtype)
    return torch.log(u) - torch.log1p(-u)


def check_key(noise: Optional[Tensor], mode: str, logits: Tensor) -> None:
    """A sampled mode needs an int64 key [seed, stream] on the logits' device
    (or the CPU); the deterministic modes take none."""
    if not mode_of(mode).sampled:
        if noise is not None:
            raise ValueError(f"mode {mode!r} is deterministic; pass noise=None")
        return
    if not isinstance(noise, Tensor):
        raise TypeError(f"mode {mode!r} samples its mask: noise must be an int64 tensor "
                        f"[seed, stream], got {type(noise).__name__}")
    if noise.dtype != torch.int64 or noise.shape != (2,):
        raise ValueError(f"noise must be an int64 tensor of shape (2,) [seed, stream], got "
                         f"{noise.dtype} of shape {tuple(noise.shape)}")
    if noise.device != logits.device and noise.device.type != "cpu":
        raise ValueError(f"noise is on {noise.device} but logits are on {logits.device}")
