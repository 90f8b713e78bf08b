"""A discovered subnetwork: a binary mask γ over named parameters, stored at
1 bit per weight, with set algebra, the paper's controls (§4.3, App. B.2),
NeuroSurgeon's ablations, and a versioned safetensors file format.

Parameters are named canonically (subind_fast/naming.py): wrapper prefixes
(``_orig_mod.``, DDP's ``module.``) are stripped and a tied parameter is one
entry under its first name, so a subnetwork found on a compiled, distributed
or weight-tied model matches the plain model it is transferred into."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch
from torch import Tensor, nn

from .atomic import atomic_write
from .bits import count_ones, pack_bits, packed_size, unpack_bits
from .naming import parameter_names
from .units import check_unit_shape, collapse_units, expand_units

FORMAT = "subind-subnetwork"
FORMAT_VERSION = 1


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return seed


class Subnetwork:
    """Parameter name → packed mask bits (1 = in the subnetwork) and shape."""

    def __init__(self, bits: Mapping[str, Tensor], shapes: Mapping[str, Iterable[int]],
                 metadata: Optional[dict] = None):
        if set(bits) != set(shapes):
            raise ValueError(f"bits and shapes name different parameters: "
                             f"{sorted(set(bits) ^ set(shapes))}")
        self._bits: dict[str, Tensor] = {}
        self._shapes: dict[str, torch.Size] = {}
        for name in sorted(bits):
            shape = torch.Size(shapes[name])
            packed = bits[name].detach().to("cpu")
            if packed.dtype != torch.uint8 or packed.numel() != packed_size(shape.numel()):
                raise ValueError(f"{name}: {packed.numel()} packed bytes do not fit shape "
                                 f"{tuple(shape)} ({packed_size(shape.numel())} expected)")
            spare = packed_size(shape.numel()) * 8 - shape.numel()
            if spare and int(packed[-1]) >> (8 - spare):
                raise ValueError(f"{name}: padding bits past the mask's {shape.numel()} entries "
                                 "are set (a damaged or crafted file); they must be 0")
            self._bits[name], self._shapes[name] = packed.contiguous(), shape
        self.metadata = dict(metadata or {})
        units = self.metadata.get("units", {})
        if not isinstance(units, dict):
            raise ValueError(f"metadata 'units' must map parameter names to unit shapes, got "
                             f"{type(units).__name__}")
        for name, unit_shape in units.items():
            if name not in self._shapes:
                raise ValueError(f"metadata 'units' names {name!r}, which the subnetwork does "
                                 "not cover")
            check_unit_shape(unit_shape, self._shapes[name], f"{name}'s units")

    # ---------------------------------------------------------- construction
    @classmethod
    def from_masks(cls, masks: Mapping[str, Tensor], metadata: Optional[dict] = None) -> "Subnetwork":
        """From {parameter name: bool tensor}."""
        for name, mask in masks.items():
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise TypeError(f"mask for {name!r} must be a bool tensor, got "
                                f"{mask.dtype if isinstance(mask, Tensor) else type(mask).__name__}")
        return cls({n: pack_bits(m.cpu()) for n, m in masks.items()},
                   {n: m.shape for n, m in masks.items()}, metadata)

    @classmethod
    def _constant(cls, model: nn.Module, value: bool, names) -> "Subnetwork":
        table = parameter_names(model)
        if names is None:
            chosen = table.params
        else:
            unknown = [n for n in names if table.resolve(n) is None]
            if unknown:
                raise ValueError(f"the model has no parameters named {unknown[:8]}")
            chosen = {table.resolve(n): table.params[table.resolve(n)] for n in names}
        return cls.from_masks({n: torch.full(p.shape, value, dtype=torch.bool)
                               for n, p in chosen.items()})

    @classmethod
    def all_of(cls, model: nn.Module, names: Optional[Iterable[str]] = None) -> "Subnetwork":
        """Every entry of every (or the named) parameter: the full-model-transfer control."""
        return cls._constant(model, True, names)

    @classmethod
    def none_of(cls, model: nn.Module, names: Optional[Iterable[str]] = None) -> "Subnetwork":
        """No entry at all: the from-scratch control."""
        return cls._constant(model, False, names)

    # --------------------------------------------------------------- queries
    def names(self) -> list[str]:
        return list(self._bits)

    def __contains__(self, name: str) -> bool:
        return name in self._bits

    def __len__(self) -> int:
        return len(self._bits)

    def shape(self, name: str) -> torch.Size:
        return self._shapes[name]

    def packed(self, name: str) -> Tensor:
        return self._bits[name]

    def mask(self, name: str, device=None) -> Tensor:
        return unpack_bits(self._bits[name].to(device or "cpu"), self._shapes[name])

    def masks(self, device=None) -> dict[str, Tensor]:
        return {name: self.mask(name, device) for name in self._bits}

    def unit_shape(self, name: str) -> torch.Size:
        """The shape of ``name``'s units (units.py) as the discovery that made
        the subnetwork recorded them (metadata ``units``; a head- or
        neuron-level mask), else the parameter's shape (one unit per weight)."""
        units = self.metadata.get("units", {})
        return torch.Size(units[name]) if name in units else self._shapes[name]

    def unit_mask(self, name: str) -> Tensor:
        """``name``'s mask per unit (one entry per head, neuron or channel at a
        unit granularity): a ValueError when a unit is kept only in part."""
        return collapse_units(self.mask(name), self.unit_shape(name), name)

    @classmethod
    def from_unit_masks(cls, unit_masks: Mapping[str, Tensor], shapes: Mapping[str, Iterable[int]],
                        metadata: Optional[dict] = None) -> "Subnetwork":
        """From {parameter name: bool mask per unit} and the parameters' shapes:
        each unit's bit expanded over its weights, the unit shapes recorded."""
        missing = sorted(set(unit_masks) - set(shapes))
        if missing:
            raise ValueError(f"from_unit_masks: no shape given for {missing[:6]}")
        for n, m in unit_masks.items():
            check_unit_shape(m.shape, shapes[n], f"the unit mask of {n}")
        masks = {n: expand_units(m, shapes[n]).contiguous() for n, m in unit_masks.items()}
        units = {n: list(m.shape) for n, m in unit_masks.items() if m.shape != masks[n].shape}
        return cls.from_masks(masks, {**(metadata or {}), **({"units": units} if units else {})})

    def counts(self) -> dict[str, tuple[int, int]]:
        """{name: (entries in the subnetwork, entries in the parameter)}."""
        return {n: (count_ones(b), self._shapes[n].numel()) for n, b in self._bits.items()}

    def layer_density(self) -> dict[str, float]:
        return {n: (kept / total if total else 0.0) for n, (kept, total) in self.counts().items()}

    def density(self) -> float:
        kept = total = 0
        for k, t in self.counts().values():
            kept, total = kept + k, total + t
        return kept / total if total else 0.0

    def nbytes(self) -> int:
        return sum(b.numel() for b in self._bits.values())

    def summary(self) -> str:
        rows = [(n, "×".join(map(str, self._shapes[n])), k, t, f"{(k / t if t else 0):.4f}")
                for n, (k, t) in self.counts().items()]
        kept = sum(r[2] for r in rows)
        total = sum(r[3] for r in rows)
        rows.append(("total", "", kept, total, f"{(kept / total if total else 0):.4f}"))
        header = ("parameter", "shape", "kept", "total", "density")
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        fmt = lambda r: "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)
                                  for i, (c, w) in enumerate(zip(r, widths)))
        return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])

    def __repr__(self) -> str:
        return f"Subnetwork({len(self)} parameters, density {self.density():.4f})"

    # ----------------------------------------------------------- set algebra
    def _check_compatible(self, other: "Subnetwork") -> None:
        if not isinstance(other, Subnetwork):
            raise TypeError(f"expected a Subnetwork, got {type(other).__name__}")
        if self._shapes != other._shapes:
            diff = sorted(set(self._shapes.items()) ^ set(other._shapes.items()))
            raise ValueError(f"subnetworks cover different parameters or shapes: {diff[:6]}")

    def _units(self) -> dict:
        return self.metadata.get("units", {})

    def _shared_units(self, other: "Subnetwork") -> dict:
        """The unit shapes both subnetworks record alike: whole units combine
        into whole units, so the result keeps them."""
        mine, theirs = self._units(), other._units()
        return {n: u for n, u in mine.items() if list(theirs.get(n, [])) == list(u)}

    def _with_units(self, units: dict) -> dict:
        return {"units": units} if units else {}

    def _combine(self, other: "Subnetwork", op) -> "Subnetwork":
        self._check_compatible(other)
        # Padding bits stay 0 for &, | and a & ~b, so bytes combine directly.
        return Subnetwork({n: op(b, other._bits[n]) for n, b in self._bits.items()}, self._shapes,
                          self._with_units(self._shared_units(other)))

    def __and__(self, other):
        return self._combine(other, torch.bitwise_and)

    def __or__(self, other):
        return self._combine(other, torch.bitwise_or)

    def __sub__(self, other):
        return self._combine(other, lambda a, b: torch.bitwise_and(a, torch.bitwise_not(b)))

    def __invert__(self):
        return Subnetwork.from_masks({n: ~m for n, m in self.masks().items()},
                                     self._with_units(self._units()))

    def __eq__(self, other) -> bool:
        return (isinstance(other, Subnetwork) and self._shapes == other._shapes
                and all(torch.equal(b, other._bits[n]) for n, b in self._bits.items()))

    __hash__ = None

    def iou(self, other: "Subnetwork") -> float:
        """|A ∩ B| / |A ∪ B| over all parameters (1.0 when both are empty)."""
        inter = sum(k for k, _ in (self & other).counts().values())
        union = sum(k for k, _ in (self | other).counts().values())
        return inter / union if union else 1.0

    # -------------------------------------------------------------- controls
    def random_like(self, seed: int) -> "Subnetwork":
        """Same number of entries per parameter, drawn uniformly (paper §4.3);
        for a unit-level subnetwork (heads, neurons) the same number of whole
        units, drawn among the units."""
        gen = torch.Generator().manual_seed(_check_seed(seed))
        masks = {}
        for name in self._bits:
            inside = self.unit_mask(name).reshape(-1)
            mask = torch.zeros_like(inside)
            mask[torch.randperm(inside.numel(), generator=gen)[:int(inside.sum())]] = True
            masks[name] = mask
        return self._from_unit_draws(masks, {"control": "random_like", "seed": seed})

    def _from_unit_draws(self, flat_unit_masks: dict, metadata: dict) -> "Subnetwork":
        """Flat per-unit draws as a subnetwork of this one's shapes and units."""
        return Subnetwork.from_masks(
            {n: expand_units(m.view(self.unit_shape(n)), self._shapes[n]).contiguous()
             for n, m in flat_unit_masks.items()},
            {**metadata, **self._with_units(self._units())})

    def complement_shortfall(self) -> dict[str, tuple[int, int]]:
        """{parameter: (entries kept, entries outside)} for every parameter
        where the subnetwork keeps more than half, so that no same-size sample
        of its complement exists."""
        out = {}
        for name, (kept, total) in self.counts().items():
            if kept > total - kept:
                out[name] = (kept, total - kept)
        return out

    def complement_sample(self, seed: int, where_short: str = "raise") -> "Subnetwork":
        """Same number of entries per parameter, drawn only from outside the
        subnetwork (App. B.2).  Where a parameter keeps more than half its
        entries (``complement_shortfall``) no such sample exists:
        ``where_short="raise"`` refuses, ``"whole"`` takes that parameter's whole
        complement (a smaller control there, which the caller reports)."""
        if where_short not in ("raise", "whole"):
            raise ValueError(f"where_short must be 'raise' or 'whole', got {where_short!r}")
        gen = torch.Generator().manual_seed(_check_seed(seed))
        masks = {}
        for name in self._bits:
            inside = self.unit_mask(name).reshape(-1)
            outside = (~inside).nonzero().squeeze(1)
            kept = int(inside.sum())
            if kept > outside.numel():
                if where_short == "raise":
                    raise ValueError(f"{name}: the subnetwork holds {kept} entries but only "
                                     f"{outside.numel()} lie outside it; cannot complement-"
                                     "sample (where_short='whole' takes the whole complement)")
                kept = outside.numel()
            mask = torch.zeros_like(inside)
            mask[outside[torch.randperm(outside.numel(), generator=gen)[:kept]]] = True
            masks[name] = mask
        return self._from_unit_draws(masks, {"control": "complement_sample", "seed": seed})

    # ------------------------------------------------------------- ablations
    def ablate(self, model: nn.Module, how: str = "keep", seed: int = 0) -> nn.Module:
        """Apply to ``model``'s weights in place (NeuroSurgeon's evaluation modes):
        ``keep`` θ⊙γ; ``zero`` θ⊙(1−γ); ``random`` the subnetwork's entries
        re-drawn from their layer's initialisation."""
        if how not in ("keep", "zero", "random"):
            raise ValueError(f"how must be 'keep', 'zero' or 'random', got {how!r}")
        params = self.matching_parameters(model)
        table = parameter_names(model)
        gen_seed = _check_seed(seed)
        with torch.no_grad():
            for i, (name, param) in enumerate(params.items()):
                gamma = self.mask(name, param.device)
                if how == "keep":
                    param.mul_(gamma.to(param.dtype))
                elif how == "zero":
                    param.mul_((~gamma).to(param.dtype))
                else:
                    path = table.path_of[table.resolve(name)]
                    fresh = _fresh_initialisation(model, path, gen_seed + i)
                    param.copy_(torch.where(gamma, fresh.to(param.device, param.dtype), param))
        return model

    def matching_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """{name: parameter of ``model``} for every parameter the subnetwork
        covers, matched by canonical name (aliases of tied parameters and
        wrapper prefixes resolve); a missing name or a shape mismatch is a
        ValueError listing them."""
        table = parameter_names(model)
        found = {n: table.params[table.resolve(n)] for n in self._bits if table.resolve(n)}
        missing = [n for n in self._bits if n not in found]
        wrong = [f"{n}: subnetwork {tuple(self._shapes[n])} vs model {tuple(p.shape)}"
                 for n, p in found.items() if p.shape != self._shapes[n]]
        if missing or wrong:
            raise ValueError("subnetwork does not match the model: "
                             + "; ".join([f"missing parameters {missing[:8]}"] * bool(missing)
                                         + wrong[:8]))
        return found

    # ---------------------------------------------------------------- files
    def save(self, path) -> Path:
        """Write a safetensors file (packed bits + metadata) atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "shapes": json.dumps({n: list(s) for n, s in self._shapes.items()}),
                "density": json.dumps(self.layer_density()),
                "metadata": json.dumps(self.metadata, default=str)}
        return atomic_write(path, lambda tmp: save_file(dict(self._bits), str(tmp),
                                                        metadata=meta))

    @classmethod
    def load(cls, path) -> "Subnetwork":
        """Read a file written by :meth:`save`; a truncated, corrupt or
        wrong-version file raises ValueError naming the file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no subnetwork file at {path}")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                bits = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as err:  # safetensors raises several types for damaged files
            raise ValueError(f"{path}: not a readable subnetwork file ({err})") from err
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a subnetwork file (format {meta.get('format')!r})")
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise ValueError(f"{path}: subnetwork format version {meta.get('format_version')!r} is "
                             f"not supported (this library reads version {FORMAT_VERSION})")
        try:
            shapes = json.loads(meta["shapes"])
            metadata = json.loads(meta.get("metadata", "{}"))
        except (KeyError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: damaged subnetwork metadata ({err})") from err
        if not isinstance(shapes, dict) or not all(
                isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
                for shape in shapes.values()):
            raise ValueError(f"{path}: damaged subnetwork metadata (shapes must map each "
                             "parameter to a list of sizes >= 0)")
        if not isinstance(metadata, dict):
            raise ValueError(f"{path}: damaged subnetwork metadata (metadata must be a JSON "
                             f"object, got {type(metadata).__name__})")
        try:
            return cls(bits, shapes, metadata)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


def _fresh_initialisation(model: nn.Module, param_name: str, seed: int) -> Tensor:
    """A new draw of ``param_name`` from its module's own initialiser."""
    module_name, _, attr = param_name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    clone = copy.deepcopy(module).cpu()  # draw on the seeded CPU generator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(clone, "reset_parameters"):
            clone.reset_parameters()
        elif type(clone).__name__ == "Conv1D":  # transformers' GPT-2 Conv1D: N(0, 0.02)
            nn.init.normal_(clone.weight, std=0.02)
            nn.init.zeros_(clone.bias)
        else:
            raise ValueError(f"cannot re-draw {param_name}: {type(module).__name__} has no "
                             "reset_parameters()")
    return getattr(clone, attr).detach()
