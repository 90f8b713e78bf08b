"""Whole-model helpers: put masks on every supported layer, anneal β, collect
the L0 penalty, and take the masks off again."""
from __future__ import annotations

import fnmatch
import logging
import warnings
from collections import Counter
from typing import Iterable, Optional, Union

import torch
from torch import Tensor, nn

from .. import sharded
from ..naming import parameter_names
from .heads import head_units
from ..subnetwork import Subnetwork
from ..units import collapse_units, expand_units
from . import coverage
from .compat import apply_compatibility_fixes
from .base import MaskedWeightMixin
from .mask_state import DEFAULT_MASK_INIT, MaskInit
from .methods import as_method
from .registry import masked_class_for

Patterns = Optional[Union[str, Iterable[str]]]
log = logging.getLogger("subind_fast")

# Module families that hold weights the method leaves alone by design (the
# paper masks linear and convolution weights only); they are reported, not warned about.
_UNMASKED_BY_DESIGN = (nn.Embedding, nn.EmbeddingBag, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
                       nn.modules.batchnorm._NormBase)


class MaskReport(dict):
    """What ``mask_model`` did: a dict {module name: masked layer} (one entry
    per masked layer), plus counts of what was masked and what was left, by
    module type, and the compatibility fixes applied (nn/compat.py)."""

    def __init__(self, layers: dict, masked: Counter, masked_weights: int, left: Counter,
                 left_parameters: Counter, fixes: list[str]):
        super().__init__(layers)
        self.masked, self.masked_weights = masked, masked_weights
        self.left, self.left_parameters = left, left_parameters
        self.fixes = fixes

    def summary(self) -> str:
        lines = [f"masked {sum(self.masked.values())} layers, {self.masked_weights:,} weights: "
                 + ", ".join(f"{t} ×{n}" for t, n in sorted(self.masked.items()))]
        if self.left:
            lines.append("left unmasked: " + ", ".join(
                f"{t} ×{n} ({why}, {self.left_parameters[(t, why)]:,} parameters)"
                for (t, why), n in sorted(self.left.items())))
        lines += [f"fix: {f}" for f in self.fixes]
        return "\n".join(lines)

    __str__ = summary

    def __repr__(self) -> str:
        return f"MaskReport({self.summary()!r})"


def _patterns(value: Patterns, name: str) -> Optional[list[str]]:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) for v in values):
        raise TypeError(f"{name} must be a glob pattern or a list of them, got {value!r}")
    return values


def _set_child(model: nn.Module, name: str, child: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, child)


def _module_names(model: nn.Module) -> tuple[dict[int, nn.Module], dict[int, list[str]]]:
    """Every module once (by identity) with all the names it is registered under."""
    modules, names = {}, {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            modules.setdefault(id(module), module)
            names.setdefault(id(module), []).append(name)
    return modules, names


def _weight_like(module: nn.Module) -> int:
    """Elements of matrix-shaped parameters named like weights held directly."""
    return sum(p.numel() for n, p in module.named_parameters(recurse=False)
               if p.dim() >= 2 and "weight" in n)


def select_modules(model: nn.Module, include: Patterns = None, exclude: Patterns = None
                   ) -> tuple[dict, dict, list]:
    """The modules ``mask_model`` masks for these patterns: (modules by id,
    their names by id, the selected ids); a pattern matching no maskable
    module is a ValueError, and so is an empty selection."""
    include_p, exclude_p = _patterns(include, "include"), _patterns(exclude, "exclude")
    modules, names = _module_names(model)
    inside_mha = {id(m.out_proj) for m in modules.values()
                  if isinstance(m, nn.MultiheadAttention) and m.out_proj is not None}
    candidates = [key for key, m in modules.items()
                  if key not in inside_mha and masked_class_for(type(m)) is not None]

    def selection_names(key):
        own = names[key]
        module = modules[key]
        if isinstance(module, nn.MultiheadAttention):
            return own + [f"{n}.out_proj" for n in own]
        return own

    all_names = [n for key in candidates for n in selection_names(key)]
    for label, pats in (("include", include_p), ("exclude", exclude_p)):
        for pat in pats or []:
            if not any(fnmatch.fnmatchcase(n, pat) for n in all_names):
                raise ValueError(f"{label} pattern {pat!r} matches no maskable layer; "
                                 f"maskable layers are e.g. {all_names[:6]}")

    def matches(name_list, pats):
        return any(fnmatch.fnmatchcase(n, p) for n in name_list for p in pats)

    def chosen(key) -> bool:
        candidate_names = selection_names(key)
        if include_p is not None and not matches(candidate_names, include_p):
            return False
        return not matches(candidate_names, exclude_p or [])

    selected = [key for key in candidates if chosen(key)]
    if not selected:
        if not candidates and masked_layers(model):
            raise ValueError("the model is already masked (sf.unmask_model(model) first to "
                             "mask it anew)")
        if not candidates and masked_class_for(type(model)) is not None:
            raise ValueError(f"mask_model masks the layers inside a model, and this "
                             f"{type(model).__name__} is a bare layer: wrap it "
                             "(nn.Sequential(layer)) or use its masked class directly")
        if not candidates:
            raise ValueError(f"{type(model).__name__} holds no maskable layer (Linear, "
                             "convolutions, nn.MultiheadAttention, GPT-2 Conv1D)")
        raise ValueError("no maskable layer was selected (check include/exclude)")
    return modules, names, selected


def mask_model(model: nn.Module, include: Patterns = None, exclude: Patterns = None,
               init: MaskInit = DEFAULT_MASK_INIT, beta: Optional[float] = None,
               freeze_base: bool = True, mode: Optional[str] = None,
               check_coverage: str = "first", method="continuous",
               granularity: Optional[str] = None, n_samples: Optional[int] = None,
               generator: Optional[torch.Generator] = None,
               subnetwork: Optional[Subnetwork] = None) -> MaskReport:
    """Replace every supported module (nn/registry.py: Linear, Conv1d/2d/3d,
    MultiheadAttention, GPT-2 Conv1D and their subclasses) whose name matches
    ``include`` (glob patterns on module names; all when None) and no
    ``exclude`` pattern by its masked version, in place.  Weights are shared,
    not copied; a module registered under several names is masked once and
    stays one module.  nn.MultiheadAttention is masked as a unit (input and
    output projections), selected by its own name or its out_proj's.  With
    ``freeze_base`` every parameter except the mask logits stops requiring
    grad.  A pattern matching no maskable module is an error (almost always a
    typo).  Modules that would bypass a masked layer are fixed where known
    (nn/compat.py), and ``check_coverage`` (nn/coverage.py) raises if a masked
    layer does not run in the model's forward.  Returns a :class:`MaskReport`.

    ``method`` (nn/methods.py) with ``granularity``, ``n_samples`` and
    ``generator``: how the masks are trained.  At ``granularity="head"`` the
    attention projections that heads.py knows get one logit per head (per
    head of each q/k/v chunk, per key/value head under grouped-query
    attention; an output projection's logits cover the columns each head
    writes through) and every other layer one per output unit.
    ``subnetwork`` installs a chosen one instead (a selection's,
    subind_fast/subnetworks/selection.py, or a saved discovery's): each masked weight's
    logits become +1 where it keeps the weight (or the unit, at a unit
    granularity: the subnetwork must keep whole units) and −1 elsewhere,
    frozen, and the layers stay in hard mode."""
    if check_coverage not in coverage.POLICIES:
        raise ValueError(f"check_coverage must be one of {coverage.POLICIES}, "
                         f"got {check_coverage!r}")
    method = as_method(method, granularity, n_samples, generator)
    modules, names, selected = select_modules(model, include, exclude)
    heads = head_units(model) if method.granularity == "head" else None
    empty = [names[key][0] for key in selected
             if any(p.numel() == 0 for p in modules[key].parameters(recurse=False))]
    if empty:  # no weight to mask, and the kernels need at least one
        raise ValueError(f"layer(s) {empty[:8]} have zero-size weights: nothing to mask; "
                         "exclude them (exclude=[...])")
    if freeze_base:
        # unmask_model gives each parameter back the flag it had before masking.
        before = model.__dict__.setdefault(_REQUIRES_GRAD, {})
        for name, p in model.named_parameters():
            before.setdefault(name, p.requires_grad)
            p.requires_grad_(False)
    replaced = {}
    for key in selected:
        module = modules[key]
        # heads= only at head granularity: a layer type registered elsewhere need not take it
        layer = masked_class_for(type(module)).from_module(
            module, init=init, beta=beta, mode=mode, freeze_weight=freeze_base, method=method,
            **({"heads": heads} if heads is not None else {}))
        for name in names[key]:
            _set_child(model, name, layer)
        replaced[names[key][0]] = layer

    if subnetwork is not None:
        _install(model, subnetwork)
    report = _report(model, replaced, apply_compatibility_fixes(model))
    if include is None:
        _warn_unmaskable(model)
    log.info("mask_model:\n%s", report.summary())
    coverage.install_check(model, check_coverage)
    return report


@torch.no_grad()
def _install(model: nn.Module, subnetwork: Subnetwork) -> None:
    """Logits +1 on the kept weights, −1 elsewhere, frozen; mode hard."""
    table = parameter_names(model)
    for layer in masked_layers(model).values():
        for weight, logits in layer.masked_parameters().values():
            name = table.name_of(weight)
            if name not in subnetwork:
                raise ValueError(f"the subnetwork has no mask for {name}, which mask_model "
                                 "selected; pass include/exclude to match the subnetwork")
            if subnetwork.shape(name) != weight.shape:
                raise ValueError(f"the subnetwork's mask for {name} has shape "
                                 f"{tuple(subnetwork.shape(name))}, the weight "
                                 f"{tuple(weight.shape)}")
            kept = collapse_units(subnetwork.mask(name), logits.shape, name)
            logits.copy_(kept.to(device=logits.device, dtype=logits.dtype) * 2 - 1)
            logits.requires_grad_(False)
        layer.mode = "hard"


def _ranked(model: nn.Module, density: float):
    """The masked logits ranked for a density: (entries (weight, logits), their
    whole values, all values flat, the descending order, how many of them the
    density keeps, each logit's weight count).  Ties go to the earlier layer
    (masked_layers order) and the earlier element; FSDP2-sharded logits are
    gathered one tensor at a time, so every rank makes the same choice."""
    if not (isinstance(density, (int, float)) and 0.0 <= density <= 1.0):
        raise ValueError(f"density must be a number in [0, 1], got {density!r}")
    sharded.reshard(model)  # FSDP2: the layers must hold their shards, not gathered copies
    entries = [(weight, s) for layer in _require_masked(model).values()
               for weight, s in layer.masked_parameters().values()]
    wholes = [sharded.whole(s.detach()) for _, s in entries]
    values = torch.cat([w.reshape(-1).double().cpu() for w in wholes])
    fans = torch.cat([torch.full((s.numel(),), w.numel() // s.numel(), dtype=torch.int64)
                      for w, s in entries])
    target = int(round(density * int(fans.sum())))
    order = torch.sort(values, descending=True, stable=True).indices
    kept = int((torch.cumsum(fans[order], 0) <= target).sum())
    return entries, wholes, values, order, kept, fans


def _write_logits(model: nn.Module, entries, wholes, new_values) -> None:
    """Each logits tensor set to ``new_values(i, whole)`` (this rank's shard of it)."""
    for i, ((_, s), whole) in enumerate(zip(entries, wholes)):
        sharded.local(s.detach()).copy_(sharded.local_shard(new_values(i, whole), s))
    sharded.reshard(model)  # FSDP2's root keeps gathered copies: the next forward regathers


@torch.no_grad()
def keep_exactly(model: nn.Module, density: float, margin: float = 1e-4) -> int:
    """Make the hard masks 1[s > 0] keep round(density · N) of the N masked
    weights: those with the largest logits over the whole model, ties going to
    the earlier layer (masked_layers order) and the earlier element.  A unit
    logit (neuron granularity) counts its unit's weights, so the count is the
    closest from below that whole units reach.  Logits change as little as
    possible: a kept one becomes at least +margin, a dropped one at most
    −margin.  FSDP2-sharded logits are gathered one tensor at a time; every
    rank makes the same choice and writes its shard.  Returns the number of
    weights kept."""
    entries, wholes, values, order, kept, fans = _ranked(model, density)
    keep = torch.zeros(values.numel(), dtype=torch.bool)
    keep[order[:kept]] = True
    parts = torch.split(keep, [s.numel() for _, s in entries])

    def cut(i, whole):
        part = parts[i].view(whole.shape).to(whole.device)
        return torch.where(part, whole.clamp(min=margin), whole.clamp(max=-margin))

    _write_logits(model, entries, wholes, cut)
    return int(fans[keep].sum())


@torch.no_grad()
def shift_to_density(model: nn.Module, density: float, margin: float = 1e-4) -> float:
    """Subtract one constant c from every logit so that the hard masks keep
    about ``density`` of the masked weights (the ranking of keep_exactly; c
    halfway between the last kept and the first dropped logit): the order and
    the gaps between logits stay as they were.  Where the logits tie at the
    cut (no constant separates them; e.g. every logit still at its start),
    c is the tied value and the tied logits become ±``margin``, split as
    keep_exactly splits ties.  Returns c."""
    entries, wholes, values, order, kept, _ = _ranked(model, density)
    ranked = values[order]
    shifted = None
    if kept == 0:
        c = float(ranked[0]) + margin
    elif kept == ranked.numel():
        c = float(ranked[-1]) - margin
    elif ranked[kept - 1] == ranked[kept]:
        c = float(ranked[kept])
        shifted = values - c
        tied = order[ranked == ranked[kept]]
        above = int((ranked > ranked[kept]).sum())
        shifted[tied[:kept - above]] = margin
        shifted[tied[kept - above:]] = -margin
    else:
        c = float(ranked[kept - 1] + ranked[kept]) / 2
    if shifted is None:
        _write_logits(model, entries, wholes, lambda i, whole: whole - c)
    else:
        starts = [0]
        for whole in wholes:
            starts.append(starts[-1] + whole.numel())
        _write_logits(model, entries, wholes, lambda i, whole: shifted[
            starts[i]:starts[i + 1]].view(whole.shape).to(whole.device, whole.dtype))
    return c


def subnetwork_of(model: nn.Module, metadata: Optional[dict] = None) -> Subnetwork:
    """The hard masks 1[s > 0] of every masked layer of ``model``, keyed by the
    canonical name of the weight they mask (e.g. ``transformer.h.0.mlp.c_fc.weight``);
    a weight masked by two layers (tied) gets the union of their masks.  The
    metadata records the layers' mask method and granularity, then ``metadata``."""
    layers = masked_layers(model)
    if not layers:
        raise ValueError("the model has no masked layers (call mask_model first)")
    table = parameter_names(model)
    masks: dict[str, Tensor] = {}
    units: dict[str, list[int]] = {}
    for layer in layers.values():
        for weight, logits in layer.masked_parameters().values():
            name = table.name_of(weight)
            whole = sharded.whole(logits.detach())
            mask = expand_units(whole.cpu() > 0, weight.shape)
            masks[name] = masks[name] | mask if name in masks else mask
            if whole.shape != weight.shape:
                units[name] = list(whole.shape)
    method = next(iter(layers.values())).mask_method
    return Subnetwork.from_masks(masks, {"method": method.name,
                                         "granularity": method.granularity,
                                         **({"units": units} if units else {}),
                                         **(metadata or {})})


def _report(model: nn.Module, replaced: dict, fixes: list[str]) -> MaskReport:
    """Counts by type of the model as it is now: masked layers, and modules
    that hold parameters directly but are not masked (and why)."""
    masked, left, left_params = Counter(), Counter(), Counter()
    masked_weights = 0
    modules, _ = _module_names(model)
    for module in modules.values():
        if isinstance(module, MaskedWeightMixin):
            masked[type(module).__name__] += 1
            masked_weights += sum(w.numel() for w, _ in module.masked_parameters().values())
            continue
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if own:
            why = ("not selected" if masked_class_for(type(module)) is not None
                   else "not a maskable type")
            left[(type(module).__name__, why)] += 1
            left_params[(type(module).__name__, why)] += own
    return MaskReport(replaced, masked, masked_weights, left, left_params, fixes)


def _warn_unmaskable(model: nn.Module) -> None:
    """Warn when masking everything left matrix-shaped weights in module types
    we cannot mask (norms and embeddings excepted: the method leaves them alone)."""
    modules, _ = _module_names(model)
    unknown = sorted({type(m).__name__ for m in modules.values()
                      if masked_class_for(type(m)) is None
                      and not isinstance(m, (MaskedWeightMixin, *_UNMASKED_BY_DESIGN))
                      and _weight_like(m)})
    if unknown:
        warnings.warn(f"mask_model left modules of types it cannot mask: {unknown} (see the "
                      "returned report); their weights stay unmasked", stacklevel=3)


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: layer} for every masked layer in ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MaskedWeightMixin)}


def _require_masked(model: nn.Module) -> dict[str, nn.Module]:
    layers = masked_layers(model)
    if not layers:
        raise ValueError("the model has no masked layers (call mask_model first)")
    return layers


def set_beta(model: nn.Module, beta: Union[float, Tensor]) -> None:
    """Set the scale β of every masked layer (in place in each layer's buffer,
    so a compiled model does not recompile)."""
    for layer in _require_masked(model).values():
        layer.set_beta(beta)


def set_mode(model: nn.Module, mode: Optional[str]) -> None:
    """Force every masked layer's mode ("soft", "hard", "none"), or None to follow train/eval."""
    for layer in _require_masked(model).values():
        layer.mode = mode


def l0_penalty(model: nn.Module) -> Tensor:
    """Σ over masked layers of their method's sparsity penalty; for continuous
    sparsification Σσ(β·s), the expected number of kept weights (nn/methods.py)."""
    return torch.stack([layer.l0_penalty() for layer in _require_masked(model).values()]).sum()


def density(model: nn.Module) -> float:
    """Fraction of all masked weights the hard masks 1[s > 0] keep (over all
    shards when the logits are sharded)."""
    kept = total = 0
    for layer in _require_masked(model).values():
        layer_kept, layer_total = layer.kept_and_total()
        kept, total = kept + layer_kept, total + layer_total
    return kept / max(1, total)


_REQUIRES_GRAD = "_subind_requires_grad_before_masking"


def unmask_model(model: nn.Module) -> nn.Module:
    """Replace every masked layer by its plain module with θ ⊙ 1[s > 0] baked
    in; every parameter that mask_model froze requires grad again as it did
    before masking."""
    layers = _require_masked(model)
    outermost = {n: l for n, l in layers.items()
                 if not any(n.startswith(f"{other}.") for other in layers if other != n)}
    _, names = _module_names(model)
    for layer in outermost.values():
        plain = layer.to_module()
        for name in names[id(layer)]:
            _set_child(model, name, plain)
    coverage.remove_check(model)
    before = model.__dict__.pop(_REQUIRES_GRAD, {})
    for name, p in model.named_parameters():
        if name in before:
            p.requires_grad_(before[name])
    return model
