"""Subnetwork transfer (paper §3.2): copy the trained source's weights where
the subnetwork's bit is 1 into a freshly initialised target and return the
frozen set for the optimizer.

Re-initialisation policy, explicit because the paper's text and
the authors' released code differ:

* ``reinit="all"`` — every weight outside the subnetwork keeps the target's
  fresh initialisation, including parameters and buffers no mask covered
  (the paper's text);
* ``reinit="masked"`` — only the parameters the subnetwork covers are
  re-initialised outside it; every other parameter and buffer is inherited
  from the source (what the authors' released code did).

Controls as one-liners:
    transfer(Subnetwork.all_of(source), source, target, freeze=False)   # full-model transfer
    transfer(Subnetwork.none_of(source), source, target)                # from scratch
    transfer(sub.random_like(seed), source, target)                     # random subnetwork
"""
from __future__ import annotations

from typing import Iterator, Mapping

import torch
from torch import Tensor, nn

from ..naming import buffer_names, parameter_names
from ..subnetwork import Subnetwork

REINIT_POLICIES = ("all", "masked")


class FrozenMasks(Mapping[Tensor, Tensor]):
    """Parameter → packed frozen bits (1 = frozen), with the parameters'
    names for error messages.  What MaskedAdamW / MaskedSGD take as ``frozen``."""

    def __init__(self, entries: Mapping[str, tuple[Tensor, Tensor]] = ()):
        self._by_param: dict[Tensor, Tensor] = {}
        self._names: dict[Tensor, str] = {}
        for name, (param, bits) in dict(entries).items():
            self._by_param[param] = bits
            self._names[param] = name

    def __getitem__(self, param: Tensor) -> Tensor:
        return self._by_param[param]

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self._by_param)

    def __len__(self) -> int:
        return len(self._by_param)

    def name_of(self, param: Tensor) -> str:
        return self._names.get(param, "<unnamed>")

    @classmethod
    def from_subnetwork(cls, subnetwork: Subnetwork, model: nn.Module) -> "FrozenMasks":
        params = subnetwork.matching_parameters(model)
        return cls({n: (p, subnetwork.packed(n).to(p.device)) for n, p in params.items()})


def architecture_differences(source: nn.Module, target: nn.Module) -> list[str]:
    """Names and shapes of parameters and buffers that differ between the two
    (canonical names: wrappers and ties do not count as differences)."""
    def table(m):
        return {**{f"param {n}": tuple(p.shape) for n, p in parameter_names(m).params.items()},
                **{f"buffer {n}": tuple(b.shape) for n, b in buffer_names(m).items()}}

    src, tgt = table(source), table(target)
    diffs = [f"{k} only in source" for k in src if k not in tgt]
    diffs += [f"{k} only in target" for k in tgt if k not in src]
    diffs += [f"{k}: source {src[k]} vs target {tgt[k]}" for k in src if k in tgt and src[k] != tgt[k]]
    return diffs


def transfer(subnetwork: Subnetwork, source: nn.Module, target: nn.Module, reinit: str = "all",
             freeze: bool = True) -> FrozenMasks:
    """Copy ``source``'s values into ``target`` where the subnetwork's bit is 1
    (in place, ``target`` should be freshly initialised).  Returns the frozen
    set for MaskedAdamW/MaskedSGD: the subnetwork's bits when ``freeze``, else
    empty (App. B.3's unfrozen variant: the subnetwork is only an initialisation)."""
    if reinit not in REINIT_POLICIES:
        raise ValueError(f"reinit must be one of {REINIT_POLICIES}, got {reinit!r}")
    if not isinstance(subnetwork, Subnetwork):
        raise TypeError(f"subnetwork must be a Subnetwork, got {type(subnetwork).__name__}")
    diffs = architecture_differences(source, target)
    if diffs:
        raise ValueError(f"source and target architectures differ ({len(diffs)} differences): "
                         + "; ".join(diffs[:10]))
    covered = {parameter_names(target).resolve(n): n
               for n in subnetwork.matching_parameters(target)}
    source_params = parameter_names(source).params
    with torch.no_grad():
        for name, param in parameter_names(target).params.items():
            src = source_params[name].to(param.device, param.dtype)
            if name in covered:
                gamma = subnetwork.mask(covered[name], param.device)
                param.copy_(torch.where(gamma, src, param))
            elif reinit == "masked":
                param.copy_(src)
        if reinit == "masked":
            source_buffers = buffer_names(source)
            for name, buf in buffer_names(target).items():
                buf.copy_(source_buffers[name].to(buf.device, buf.dtype))
    if not freeze:
        return FrozenMasks()
    return FrozenMasks.from_subnetwork(subnetwork, target)
