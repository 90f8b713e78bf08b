"""The one place that decides which backend serves an op on a device.

Op families (backends/base.py): ``mask`` (mask_weight on its own), ``linear``
(masked_linear), ``conv`` (masked_conv*), ``l0`` (Σσ(βs)), ``optim`` (the
fused frozen-mask optimizer steps) and ``sampled`` (every masked op in a
sampled mode — hard-concrete, Gumbel straight-through: the sampled mask pass
composed with ATen's GEMMs).  Each backend class declares the devices
and families it serves; the defaults are

    cpu    → cpu      (compiled C++; raises MissingKernelError if not built)
    cuda   → linear: triton (fused masked GEMMs);  conv, mask: cuda (compiled
             element-wise kernels + cuDNN) when built, else triton's
             element-wise kernels;  l0, optim: triton;  sampled: cuda
             (compiled sampled-mask pass + cuBLAS/cuDNN) when built, else reference
    other  → reference

``SUBIND_BACKEND=<name>`` (reference | cpu | triton | cuda) forces one backend
for every family on every device; a forced backend that does not serve the
device or the family is a ValueError naming both, raised before any kernel is
touched.  :func:`backend_info` reports the resulting table.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch

from . import _extension
from .backends.base import FAMILIES, Backend

BACKEND_NAMES = ("reference", "cpu", "triton", "cuda")


@lru_cache(maxsize=None)
def backend_class(name: str) -> type[Backend]:
    """The class of a backend (its capability declaration), imported on demand."""
    if name == "reference":
        from .backends.reference import ReferenceBackend
        return ReferenceBackend
    if name == "cpu":
        from .backends.cpu import CpuBackend
        return CpuBackend
    if name == "cuda":
        from .backends.compiled import CudaBackend
        return CudaBackend
    if name == "triton":
        if not _extension.triton_available():
            raise _extension.MissingKernelError("the triton backend needs `pip install triton`")
        from .backends.triton_backend import TritonBackend
        return TritonBackend
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKEND_NAMES}")


@lru_cache(maxsize=None)
def get_backend(name: str) -> Backend:
    return backend_class(name)()


def _forced() -> str | None:
    name = os.environ.get("SUBIND_BACKEND", "").strip()
    if not name:
        return None
    if name not in BACKEND_NAMES:
        raise ValueError(f"SUBIND_BACKEND={name!r} is not one of {BACKEND_NAMES}")
    return name


def backend_name(device_type: str, family: str) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown op family {family!r}; families are {FAMILIES}")
    forced = _forced()
    if forced is not None:
        cls = backend_class(forced)
        if cls.devices is not None and device_type not in cls.devices:
            raise ValueError(f"SUBIND_BACKEND={forced} cannot serve {device_type} tensors "
                             f"(it serves {sorted(cls.devices)})")
        if family not in cls.families:
            raise ValueError(f"SUBIND_BACKEND={forced} does not implement the {family} op family "
                             f"(it implements {sorted(cls.families)}); unset SUBIND_BACKEND to "
                             "use the default backend for each family")
        return forced
    if device_type == "cpu":
        return "cpu"
    if device_type == "cuda":
        if family == "sampled":
            return "cuda" if _extension.available("_C_cuda") else "reference"
        if family in ("conv", "mask") and _extension.available("_C_cuda"):
            return "cuda"
        return "triton"
    return "reference"


def backend_for(device: torch.device, family: str) -> Backend:
    return get_backend(backend_name(device.type, family))


def capabilities() -> dict:
    """{backend: {"devices": [...] or "any", "families": [...]}} as declared."""
    table = {}
    for name in BACKEND_NAMES:
        try:
            cls = backend_class(name)
        except _extension.MissingKernelError as err:
            table[name] = {"unavailable": str(err)}
            continue
        table[name] = {"devices": "any" if cls.devices is None else sorted(cls.devices),
                       "families": sorted(cls.families)}
    return table


def backend_info() -> dict:
    """Which backend serves which op family on which device, what each backend
    declares, and what is built."""
    table = {}
    for device_type in ("cpu", "cuda"):
        row = {}
        for family in FAMILIES:
            try:
                row[family] = backend_name(device_type, family)
            except ValueError as err:
                row[family] = f"error: {err}"
        table[device_type] = row
    return {
        "devices": table,
        "other devices": "reference",
        "override": os.environ.get("SUBIND_BACKEND") or None,
        "capabilities": capabilities(),
        "compiled": {"_C (cpu)": _extension.available("_C"),
                     "_C_cuda (cuda)": _extension.available("_C_cuda"),
                     "triton": _extension.triton_available()},
        "cuda_device": torch.cuda.is_available(),
    }
