"""What the weights a mask removes contribute instead of nothing: ablation
targets, at every granularity (weight, neuron/channel, head).

A masked layer computes y = x·(θ ⊙ m)ᵀ + b: the removed weights see zero.
With an ablation target they see a reference input x_ref instead,

    y = x·(θ ⊙ m)ᵀ + x_ref·(θ ⊙ (1 − m))ᵀ + b,

(convolutions likewise) so a removed unit outputs what it would on x_ref:

* ``zero`` — no second term (the default; the paper's masks);
* ``mean`` — x_ref = the layer's mean input over a reference set (per
  feature; a convolution's per channel, at every position): a removed neuron
  or head outputs its mean activation (mean ablation);
* ``learned`` — x_ref a trainable vector started at that mean (or zero): a
  learned constant per removed unit, trained with the logits (optimal
  ablation, Li & Janson 2024; for a projection with more outputs than
  inputs the constants are those θ can produce);
* ``corrupted`` — x_ref = the layer's input when the unmasked model runs on a
  paired corrupted input (``record_corrupted`` before each forward): the
  removed units output their corrupted-run activations (activation patching).

The second term is x_ref·θᵀ − x_ref·(θ ⊙ m)ᵀ: one plain and one masked
product on x_ref through the same kernels, whose gradient reaches the logits
(−x_ref·(θ ⊙ m′)ᵀ) and, for ``learned``, x_ref.  The masks must be
deterministic (continuous sparsification; soft, hard or none): a sampled mask
would draw a different sample for x and x_ref.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import Tensor, nn

from .. import sharded
from .masked_forward import ABLATION_ATTRIBUTE as _HOW
from .masked_forward import ABLATION_CODES
from .methods import as_method
from .model import _require_masked, masked_layers, select_modules
from .registry import masked_class_for

ABLATIONS = tuple(ABLATION_CODES)


def ablation_of(layer: nn.Module) -> str:
    return layer.__dict__.get(_HOW, "zero")


def _check_layer(name: str, layer: nn.Module, how: str) -> None:
    _check_kind(name, type(layer), layer.mask_method, how)


def _check_kind(name: str, layer_class: type, method, how: str) -> None:
    if how == "zero":
        return
    if layer_class._unit_axis is None:
        raise ValueError(f"{name} ({layer_class.__name__}): ablation {how!r} needs a layer "
                         "that computes one product (Linear, convolutions, GPT-2 Conv1D); "
                         "exclude it or keep ablation='zero'")
    if method.sampled:
        raise ValueError(f"{name}: ablation {how!r} needs a deterministic mask (continuous "
                         f"sparsification), not {method.name}: a sampled mask would "
                         "differ between the input and the reference input")


def check_ablation(model: nn.Module, how: str, include=None, exclude=None,
                   method="continuous") -> None:
    """The error ``set_ablation(how)`` would raise once ``model`` is masked
    with these patterns and method, raised now, without masking it (a command
    checks before it writes anything)."""
    if how not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {how!r}")
    method = as_method(method)
    modules, names, selected = select_modules(model, include, exclude)
    for key in selected:
        _check_kind(names[key][0], masked_class_for(type(modules[key])), method, how)


def _mean_inputs(model: nn.Module, layers: dict, batches: Iterable,
                 forward: Callable[[nn.Module, object], object]) -> dict[str, Tensor]:
    """{layer name: mean input} over ``batches`` with the masks off (the full model)."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}

    def recorder(name, layer):
        def hook(_module, args):
            x = args[0].detach()
            features = 1 if layer._output_unit_dim == 1 else x.dim() - 1  # channels or last
            total = x.movedim(features, -1).reshape(-1, x.shape[features]).sum(
                0, dtype=torch.float64)
            n = x.numel() // x.shape[features]
            sums[name] = sums[name] + total if name in sums else total
            counts[name] = counts.get(name, 0) + n
        return hook

    handles = [layer.register_forward_pre_hook(recorder(name, layer))
               for name, layer in layers.items()]
    try:
        with torch.no_grad(), unmasked(model):
            for batch in batches:
                forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in layers if name not in sums]
    if missing:
        raise ValueError(f"the reference batches never ran masked layers {missing[:6]} "
                         "(empty reference set, or a forward that skips them)")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Each rank saw its part of the reference set: the mean is over all of them
        # (the same when every rank saw the whole set).
        for name in layers:
            totals = torch.cat([sums[name], torch.tensor([float(counts[name])],
                                                         dtype=torch.float64,
                                                         device=sums[name].device)])
            torch.distributed.all_reduce(totals)
            sums[name], counts[name] = totals[:-1], float(totals[-1])
    return {name: (sums[name] / counts[name]) for name in layers}


def _call(model, batch):
    return model(batch)


def set_ablation(model: nn.Module, how: str, batches: Optional[Iterable] = None,
                 forward: Callable[[nn.Module, object], object] = _call) -> None:
    """Make every masked layer of ``model`` ablate removed weights ``how``
    (ABLATIONS; module doc).  ``mean`` and ``learned`` add an
    ``ablation_input`` to each layer (a buffer; for ``learned`` a trainable
    parameter, ``ablation_parameters``), set from ``batches`` (the reference
    set; ``forward(model, batch)`` runs one, default ``model(batch)``) or
    later by ``record_means`` — a ``mean`` ablation refuses to run before;
    ``learned`` starts from zero without them."""
    if how not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {how!r}")
    layers = _require_masked(model)
    for name, layer in layers.items():
        _check_layer(name, layer, how)
    for name, layer in layers.items():
        _clear(layer)
        if how == "zero":
            continue  # no state: the layer's fast path
        layer.__dict__[_HOW] = how
        # Saved with the layer (state_dict, save_pretrained), so a reload knows the ablation.
        layer.register_buffer("ablation_code", torch.tensor(
            ABLATION_CODES[how], dtype=torch.int8, device=layer.weight.device))
        if how in ("mean", "learned"):
            weight = layer.weight
            features = (weight.shape[1] * layer.groups if layer._output_unit_dim == 1
                        else weight.shape[layer._input_axis])  # input channels or features
            value = torch.zeros(features, dtype=weight.dtype, device=weight.device)
            if how == "mean":
                layer.register_buffer("ablation_input", value)
                layer.__dict__["_means_recorded"] = False
            else:  # trained in full precision, as the logits are
                full = value if value.dtype == torch.float64 else value.float()
                layer.register_parameter("ablation_input", nn.Parameter(full))
    if how in ("mean", "learned") and batches is not None:
        record_means(model, batches, forward)


@torch.no_grad()
def record_means(model: nn.Module, batches: Iterable,
                 forward: Callable[[nn.Module, object], object] = _call) -> None:
    """Set every layer's ``ablation_input`` (``mean``, ``learned``) in place to
    its mean input over ``batches`` run by the full model (masks off) — in
    place, so a model already wrapped (DDP) keeps the same tensors."""
    layers = {name: layer for name, layer in _require_masked(model).items()
              if "ablation_input" in layer._parameters or "ablation_input" in layer._buffers}
    if not layers:
        raise ValueError("record_means needs set_ablation(model, 'mean' or 'learned') first")
    means = _mean_inputs(model, layers, batches, forward)
    sharded.reshard(model)  # FSDP2: write the shards, not the copies the forwards gathered
    for name, layer in layers.items():
        target = layer.ablation_input  # FSDP2: this rank's shard of it
        sharded.local(target.detach()).copy_(sharded.local_shard(
            means[name].to(device=target.device, dtype=target.dtype), target))
        layer.__dict__["_means_recorded"] = True


def _clear(layer: nn.Module) -> None:
    layer.__dict__.pop(_HOW, None)
    layer.__dict__.pop("_corrupted_input", None)
    layer._buffers.pop("ablation_input", None)
    layer._buffers.pop("ablation_code", None)
    layer._parameters.pop("ablation_input", None)
    layer.__dict__.pop("_means_recorded", None)


def ablation_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable reference inputs of a ``learned`` ablation (empty otherwise)."""
    return [layer._parameters["ablation_input"] for layer in masked_layers(model).values()
            if "ablation_input" in layer._parameters]


@contextlib.contextmanager
def unmasked(model: nn.Module) -> Iterator[nn.Module]:
    """Every masked layer computes the full layer (mode none, no ablation)
    inside the block; the modes are restored after it."""
    layers = masked_layers(model).values()
    before = [(layer, layer._mode, layer.__dict__.get("_ablation_off", False))
              for layer in layers]
    for layer in layers:
        layer.mode = "none"
        layer.__dict__["_ablation_off"] = True
    try:
        yield model
    finally:
        for layer, mode, off in before:
            layer.mode = mode
            layer.__dict__["_ablation_off"] = off


def record_corrupted(model: nn.Module, run: Callable[[], object]) -> None:
    """Run ``run()`` (the model on the corrupted inputs paired with the next
    forward's) with the masks off and without gradients, keeping each masked
    layer's input: under a ``corrupted`` ablation the next forwards' removed
    weights see it."""
    layers = _require_masked(model)
    for name, layer in layers.items():
        if ablation_of(layer) != "corrupted":
            raise ValueError(f"{name}: record_corrupted needs set_ablation(model, 'corrupted')")

    def recorder(layer):
        def hook(_module, args):
            layer.__dict__["_corrupted_input"] = args[0].detach()
        return hook

    for layer in layers.values():
        layer.__dict__.pop("_corrupted_input", None)
    handles = [layer.register_forward_pre_hook(recorder(layer)) for layer in layers.values()]
    try:
        with torch.no_grad(), unmasked(model):
            run()
    finally:
        for handle in handles:
            handle.remove()


def resample(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A paired corrupted input by resampling: every tensor argument with the
    batch's first dimension shifted by one example (the last paired with the
    first), so each input meets another of the same distribution and the
    model's other arguments stay as they were."""
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, Tensor) and t.dim() > 0]
    if not tensors:
        raise ValueError("a corrupted (resample) ablation needs the model's batch as tensor "
                         "arguments")
    batch = tensors[0].shape[0]
    if batch < 2:
        raise ValueError("a corrupted (resample) ablation pairs each input with another of "
                         f"its batch: batches need at least 2 inputs, got {batch}")

    def shifted(value):
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
            return value.roll(1, 0)
        return value

    return tuple(map(shifted, args)), {k: shifted(v) for k, v in kwargs.items()}


class _RecordCorruptedFirst:
    """The forward pre-hook of ``record_corrupted_before_each_forward``: an
    object, not a closure, so that a model carrying it still pickles
    (``torch.save(model)``) when ``corrupt`` does (a module-level function)."""

    def __init__(self, corrupt):
        self.corrupt, self.running = corrupt, False

    @torch.compiler.disable  # it registers hooks: eager, a graph break under torch.compile
    def __call__(self, module, args, kwargs):
        if self.running:  # the corrupted forward itself
            return None
        self.running = True
        try:
            bad_args, bad_kwargs = self.corrupt(args, kwargs)
            record_corrupted(module, lambda: module(*bad_args, **bad_kwargs))
        finally:
            self.running = False
        return None


def record_corrupted_before_each_forward(model: nn.Module, corrupt=resample):
    """Make every call of ``model`` first record its masked layers' inputs on
    ``corrupt(args, kwargs)`` (``record_corrupted``), so a ``corrupted``
    ablation needs no change to the training or evaluation loop (the pairs
    then come from each batch; subind's engine pairs by data set instead,
    engine/ablation.py).  Returns the hook's handle (``.remove()`` undoes it).
    Under ``torch.compile`` the recording runs eagerly (a graph break: it
    registers hooks), so ``fullgraph=True`` cannot trace it; call
    ``record_corrupted`` outside the compiled call instead."""
    return model.register_forward_pre_hook(_RecordCorruptedFirst(corrupt), with_kwargs=True)
