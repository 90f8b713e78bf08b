"""The one place that decides which backend serves an op on a device.

Op families: ``linear`` (masked_linear), ``conv`` (masked_conv*), ``mask``
(mask_weight on its own), ``l0`` (Σσ(βs)) and ``optim`` (the fused
frozen-mask optimizer steps).  Defaults:

    cpu    → cpu      (compiled C++; raises MissingKernelError if not built)
    cuda   → linear: triton (fused masked GEMMs);  conv, mask: cuda (compiled
             element-wise kernels + cuDNN) when built, else triton's
             element-wise kernels;  l0, optim: triton
    other  → reference

``SUBIND_BACKEND=<name>`` (reference | cpu | triton | cuda) forces one backend
for every family on every device it can serve; :func:`backend_info` reports
the resulting table.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch

from . import _extension
from .backends.base import ComposedBackend

FAMILIES = ("linear", "conv", "mask", "l0", "optim")
BACKEND_NAMES = ("reference", "cpu", "triton", "cuda")
_DEVICES_SERVED = {"reference": None, "cpu": {"cpu"}, "triton": {"cuda"}, "cuda": {"cuda"}}


@lru_cache(maxsize=None)
def get_backend(name: str) -> ComposedBackend:
    if name == "reference":
        from .backends.reference import ReferenceBackend
        return ReferenceBackend()
    if name == "cpu":
        from .backends.cpu import CpuBackend
        return CpuBackend()
    if name == "cuda":
        from .backends.compiled import CompiledBackend
        return CompiledBackend("cuda", "_C_cuda")
    if name == "triton":
        if not _extension.triton_available():
            raise _extension.MissingKernelError("the triton backend needs `pip install triton`")
        from .backends.triton_backend import TritonBackend
        return TritonBackend()
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKEND_NAMES}")


def _forced() -> str | None:
    name = os.environ.get("SUBIND_BACKEND", "").strip()
    if not name:
        return None
    if name not in BACKEND_NAMES:
        raise ValueError(f"SUBIND_BACKEND={name!r} is not one of {BACKEND_NAMES}")
    return name


def backend_name(device_type: str, family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown op family {family!r}")
    forced = _forced()
    if forced is not None:
        served = _DEVICES_SERVED[forced]
        if served is not None and device_type not in served:
            raise ValueError(f"SUBIND_BACKEND={forced} cannot serve {device_type} tensors "
                             f"(it serves {sorted(served)})")
        return forced
    if device_type == "cpu":
        return "cpu"
    if device_type == "cuda":
        if family in ("conv", "mask") and _extension.available("_C_cuda"):
            return "cuda"
        return "triton"
    return "reference"


def backend_for(device: torch.device, family: str) -> ComposedBackend:
    return get_backend(backend_name(device.type, family))


def backend_info() -> dict:
    """Which backend serves which op family on which device, and what is built."""
    table = {}
    for device_type in ("cpu", "cuda"):
        try:
            table[device_type] = {f: backend_name(device_type, f) for f in FAMILIES}
        except ValueError as err:
            table[device_type] = {"error": str(err)}
    return {
        "devices": table,
        "other devices": "reference",
        "override": os.environ.get("SUBIND_BACKEND") or None,
        "compiled": {"_C (cpu)": _extension.available("_C"),
                     "_C_cuda (cuda)": _extension.available("_C_cuda"),
                     "triton": _extension.triton_available()},
        "cuda_device": torch.cuda.is_available(),
    }
