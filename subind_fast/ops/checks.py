"""Argument checks shared by the functional API and the layers.  Every error
names the argument and the shapes, dtypes or devices involved."""
from __future__ import annotations

import math

import torch

from .modes import mode as mode_of

WEIGHT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LOGIT_DTYPES = (torch.float32, torch.float64)


def check_beta(beta) -> float:
    """A Python number (or a one-element tensor) as a validated positive float."""
    if isinstance(beta, torch.Tensor):
        if beta.numel() != 1:
            raise ValueError(f"beta must be a scalar, got a tensor of shape {tuple(beta.shape)}")
        beta = beta.item()
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a positive finite number, got {type(beta).__name__}")
    beta = float(beta)
    if not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a positive finite number, got {beta}")
    return beta


def _is_fake(tensor: torch.Tensor) -> bool:
    if type(tensor) in (torch.Tensor, torch.nn.Parameter):  # the hot path: plain tensors
        return False
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(tensor)


def beta_tensor(beta, logits: torch.Tensor) -> torch.Tensor:
    """β as the one-element tensor the ops take.  A number becomes a 0-d tensor
    of the logits' dtype on their device; a tensor (a layer's buffer) passes
    through after its shape, dtype and device are checked.  Its value is
    checked where that costs nothing: on the CPU and outside torch.compile
    (reading a GPU value would synchronise; layers check values when set)."""
    if not isinstance(beta, torch.Tensor):
        return torch.tensor(check_beta(beta), dtype=logits.dtype, device=logits.device)
    if beta.numel() != 1 or not beta.is_floating_point():
        raise ValueError(f"beta must be a one-element floating tensor, got shape "
                         f"{tuple(beta.shape)} of {beta.dtype}")
    if beta.device != logits.device and beta.device.type != "cpu":
        raise ValueError(f"beta is on {beta.device} but logits are on {logits.device}")
    if (beta.device.type == "cpu" and not torch.compiler.is_compiling()
            and not _is_fake(beta)):  # a FakeTensor (memory planning) has no value
        value = beta.item()
        if not 0 < value < math.inf:
            raise ValueError(f"beta must be a positive finite number, got {value}")
    return beta


def _check_tensor(name: str, t, allowed) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in allowed:
        kinds = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} has dtype {t.dtype}; expected one of: {kinds}")


def check_masked_weight(weight, logits, mode) -> None:
    _check_tensor("weight", weight, WEIGHT_DTYPES)
    _check_tensor("logits", logits, LOGIT_DTYPES)
    if logits.shape != weight.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} must equal weight shape "
                         f"{tuple(weight.shape)}")
    if logits.device != weight.device:
        raise ValueError(f"logits is on {logits.device} but weight is on {weight.device}")
    if logits.dtype == torch.float64 and weight.dtype != torch.float64:
        raise TypeError(f"logits may be float64 only with a float64 weight (weight is {weight.dtype}); "
                        "use float32 logits")
    mode_of(mode)


def check_input(x, weight, bias, in_dim: int, expected_in: int, op: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: input has dtype {x.dtype}; a floating-point input is required")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        # (under autocast the op casts x, θ and the bias alike, as F.linear does)
        raise TypeError(f"{op}: input dtype {x.dtype} differs from weight dtype {weight.dtype}")
    if x.device != weight.device:
        raise ValueError(f"{op}: input is on {x.device} but weight is on {weight.device}")
    if x.dim() == 0 or x.shape[in_dim] != expected_in:
        raise ValueError(f"{op}: input shape {tuple(x.shape)} does not match weight shape "
                         f"{tuple(weight.shape)} (expected size {expected_in} at dim {in_dim})")
    if bias is not None:
        _check_tensor("bias", bias, WEIGHT_DTYPES)
        if bias.device != weight.device or (bias.dtype != weight.dtype
                                            and not torch.is_autocast_enabled(x.device.type)):
            raise TypeError(f"{op}: bias ({bias.dtype}, {bias.device}) must match weight "
                            f"({weight.dtype}, {weight.device})")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"{op}: bias shape {tuple(bias.shape)} must be ({weight.shape[0]},)")
