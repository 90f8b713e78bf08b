"""One name per parameter, whatever wraps or ties it.

* Wrappers add path segments that are not part of the model: ``_orig_mod``
  (torch.compile), ``module`` (DistributedDataParallel, DataParallel),
  ``_fsdp_wrapped_module`` (FSDP1), ``_checkpoint_wrapped_module`` (activation
  checkpointing).  They are removed, so a subnetwork found on a compiled or
  DDP model matches the plain model.
* Tied parameters (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``)
  are one parameter with several names.  Its canonical name is the first one
  ``named_parameters()`` yields; every other name is an alias of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

# Path segments that only ever name a wrapped module.
_WRAPPER_SEGMENTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
# Containers of repeated blocks in timm and transformers models (ViT ``blocks``,
# GPT-2 ``h``, BERT/ResNet ``layer``/``layers``, Swin/ConvNeXt ``stages``).
BLOCK_CONTAINERS = ("blocks", "h", "layer", "layers", "stages", "block")


def block_of(name: str) -> str:
    """The block a parameter or module belongs to: ``transformer.h.3.mlp.c_fc.weight``
    → ``h.3`` (a BLOCK_CONTAINERS entry and its index); outside blocks, the
    name's first part."""
    parts = name.split(".")
    for i in range(len(parts) - 1):
        if parts[i] in BLOCK_CONTAINERS and parts[i + 1].isdigit():
            return f"{parts[i]}.{parts[i + 1]}"
    return parts[0]


def _is_data_parallel(module) -> bool:
    return isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel))


def strip_wrappers(name: str, model: nn.Module | None = None) -> str:
    """``name`` without wrapper segments.  A ``module`` segment is a wrapper's
    only under DataParallel/DDP, which needs ``model`` to tell; without it a
    leading ``module.`` is taken to be one (names from a DDP state dict)."""
    segments = name.split(".")
    kept, current = [], model
    for i, segment in enumerate(segments):
        if model is None:
            wrapper = segment in _WRAPPER_SEGMENTS or (segment == "module" and i == 0)
        else:
            wrapper = segment in _WRAPPER_SEGMENTS or (segment == "module"
                                                      and _is_data_parallel(current))
            current = getattr(current, segment, None) if isinstance(current, nn.Module) else None
        if not wrapper:
            kept.append(segment)
    return ".".join(kept)


@dataclass
class ParameterNames:
    """A model's parameters under canonical names (see module docstring)."""

    params: dict[str, nn.Parameter] = field(default_factory=dict)   # canonical → parameter
    canonical_of: dict[str, str] = field(default_factory=dict)      # any name → canonical
    path_of: dict[str, str] = field(default_factory=dict)           # canonical → actual path

    def resolve(self, name: str) -> str | None:
        """The canonical name for ``name`` (an alias, a wrapped or a canonical name)."""
        return self.canonical_of.get(name) or self.canonical_of.get(strip_wrappers(name))

    def name_of(self, param) -> str:
        for name, p in self.params.items():
            if p is param:
                return name
        raise KeyError("the tensor is not a parameter of this model")


def parameter_names(model: nn.Module) -> ParameterNames:
    table = ParameterNames()
    first: dict[int, str] = {}
    for path, param in model.named_parameters(remove_duplicate=False):
        clean = strip_wrappers(path, model)
        canonical = first.setdefault(id(param), clean)
        if canonical == clean:
            table.params[canonical] = param
            table.path_of[canonical] = path
        table.canonical_of[clean] = canonical
        table.canonical_of[path] = canonical
    return table


def buffer_names(model: nn.Module) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """Buffers under canonical names (the first name of a shared buffer)."""
    table, seen = {}, set()
    for path, buffer in model.named_buffers(remove_duplicate=False):
        if id(buffer) not in seen:
            seen.add(id(buffer))
            table[strip_wrappers(path, model)] = buffer
    return table
