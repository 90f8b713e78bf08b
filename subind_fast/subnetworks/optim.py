"""Frozen-update optimizers for subnetwork transfer.

``MaskedAdamW`` and ``MaskedSGD`` follow torch.optim.AdamW / torch.optim.SGD
exactly on free elements; on frozen elements (bit 1 in the packed mask from
:func:`subind_fast.transfer`) the parameter and every state tensor stay
bit-for-bit unchanged — no step, no weight decay, no momentum or moment decay.
(Zeroing the gradient of frozen entries is *not* enough: weight decay and
momentum would still move them.)

Each parameter is updated by one fused pass that reads the packed bits: the
custom ops ``subind::adamw_step`` / ``subind::sgd_step`` (schemas with
mutation annotations and fakes, csrc/ops/schemas.cpp), served by compiled C++
on the CPU, Triton on CUDA, and the reference kernels in PyTorch ops elsewhere
(ops/reference.py).  The step count lives
in a CPU tensor, so ``step()`` never synchronises the device.

Sharded parameters (FSDP2 DTensors) are stepped shard by shard: each rank
updates its local shard with the frozen bits of that shard (cut from the
whole-parameter bits once, at construction), and keeps its state as plain
local tensors.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

from .. import sharded
from ..ops import library as ops
from ..bits import pack_bits, packed_size, unpack_bits

_PARAM_DTYPES = (torch.float32, torch.float64)


def _check_range(name: str, value, low: float, high: float = math.inf, high_open=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value and (
        value < high if high_open else value <= high)
    if not ok:
        bound = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise ValueError(f"{name} must be a number in {bound}, got {value!r}")


def _bits_of_shard(bits: Tensor, param: Tensor) -> Tensor:
    """The packed bits of this rank's shard of ``param`` (all of them when
    ``param`` is not sharded), on its device."""
    bits = bits.detach()
    if sharded.is_sharded(param):
        mask = unpack_bits(bits.cpu(), param.shape)
        bits = pack_bits(sharded.local_shard(mask, param).cpu())
    return bits.to(sharded.local(param).device).contiguous()


class _FrozenMaskOptimizer(Optimizer):
    """Shared parts: parameter checks, the frozen bits, empty-state helpers."""

    def __init__(self, params, defaults, frozen: Optional[Mapping[Tensor, Tensor]]):
        super().__init__(params, defaults)
        held = {p for group in self.param_groups for p in group["params"]}
        for p in held:
            if not isinstance(p, Tensor) or p.dtype not in _PARAM_DTYPES:
                raise TypeError(f"{type(self).__name__} updates float32/float64 parameters; got "
                                f"{p.dtype if isinstance(p, Tensor) else type(p).__name__}")
        frozen = frozen or {}
        name_of = getattr(frozen, "name_of", lambda p: f"tensor of shape {tuple(p.shape)}")
        for param in frozen:
            if not isinstance(param, Tensor):
                raise TypeError(f"frozen maps parameters (tensors) to packed bits, e.g. "
                                f"sf.transfer's FrozenMasks; got a key {param!r}")
            if param not in held:
                raise ValueError(f"the frozen set names {name_of(param)}, which this optimizer "
                                 "does not hold")
            bits = frozen[param]
            if (not isinstance(bits, Tensor) or bits.dtype != torch.uint8
                    or bits.numel() != packed_size(param.numel())):
                raise ValueError(f"frozen bits for {name_of(param)} must be "
                                 f"{packed_size(param.numel())} uint8 bytes")
        # Validated in full before any state is written.
        for param in frozen:
            self.state[param]["frozen_bits"] = _bits_of_shard(frozen[param], param)

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        # Optimizer.load_state_dict casts state tensors to the parameter's
        # float dtype; the packed bits (0..255, exact in any float) go back.
        for state in self.state.values():
            if "frozen_bits" in state:
                state["frozen_bits"] = state["frozen_bits"].to(torch.uint8)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                shard = sharded.local(p)
                bits = state.get("frozen_bits", self._no_bits(shard))
                self._update(group, shard, sharded.local(p.grad).contiguous(), state, bits)
        return loss

    def _update(self, group: dict, p: Tensor, grad: Tensor, state: dict, bits: Tensor) -> None:
        raise NotImplementedError

    @staticmethod
    def _no_bits(p: Tensor) -> Tensor:
        return torch.empty(0, dtype=torch.uint8, device=p.device)

    @staticmethod
    def _run_on_contiguous(p: Tensor, update) -> None:
        """Kernels need contiguous memory; a strided parameter is updated
        through a contiguous copy written back."""
        if p.is_contiguous():
            update(p)
        else:
            tmp = p.detach().contiguous()
            update(tmp)
            with torch.no_grad():
                p.copy_(tmp)


class MaskedAdamW(_FrozenMaskOptimizer):
    """torch.optim.AdamW with frozen elements (see module docstring)."""

    def __init__(self, params, frozen: Optional[Mapping[Tensor, Tensor]] = None, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False):
        _check_range("lr", lr, 0.0)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair, got {betas!r}")
        _check_range("betas[0]", betas[0], 0.0, 1.0, high_open=True)
        _check_range("betas[1]", betas[1], 0.0, 1.0, high_open=True)
        _check_range("eps", eps, 0.0)
        _check_range("weight_decay", weight_decay, 0.0)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=bool(amsgrad))
        super().__init__(params, defaults, frozen)

    def _update(self, group, p, grad, state, bits):
        beta1, beta2 = group["betas"]
        if "step" not in state:
            state["step"] = torch.tensor(0.0)  # CPU: reading it never syncs a GPU
            for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ()):
                state[key] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        state["step"] += 1
        t = state["step"].item()
        step_size = group["lr"] / (1 - beta1 ** t)
        inv_sqrt_bias2 = 1 / math.sqrt(1 - beta2 ** t)
        vmax = state["max_exp_avg_sq"] if group["amsgrad"] else p.new_empty(0)
        kernel = ops.adamw_step
        self._run_on_contiguous(p, lambda q: kernel(
            q, grad, state["exp_avg"], state["exp_avg_sq"], vmax, bits, group["lr"], beta1, beta2,
            group["eps"], group["weight_decay"], step_size, inv_sqrt_bias2))


class MaskedSGD(_FrozenMaskOptimizer):
    """torch.optim.SGD with frozen elements (see module docstring)."""

    def __init__(self, params, frozen: Optional[Mapping[Tensor, Tensor]] = None, lr: float = 1e-3,
                 momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        _check_range("lr", lr, 0.0)
        _check_range("momentum", momentum, 0.0)
        _check_range("dampening", dampening, 0.0, 1.0)
        _check_range("weight_decay", weight_decay, 0.0)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=bool(nesterov))
        super().__init__(params, defaults, frozen)

    def _update(self, group, p, grad, state, bits):
        first_step = "momentum_buffer" not in state
        if group["momentum"] != 0 and first_step:
            # Frozen entries keep this zero; free ones take g on the first step.
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        buf = state["momentum_buffer"] if group["momentum"] != 0 else p.new_empty(0)
        kernel = ops.sgd_step
        self._run_on_contiguous(p, lambda q: kernel(
            q, grad, buf, bits, group["lr"], group["momentum"], group["dampening"],
            group["weight_decay"], group["nesterov"], first_step))
