"""Masked transformers models through ``save_pretrained`` / ``from_pretrained``.

``model.save_pretrained(folder)`` already writes everything: the mask state is
ordinary parameters and buffers (each layer's ``mask_state_names()``: its
logits, β, mode and mask method, and an ablation's code and inputs).  A plain ``from_pretrained`` builds the
unmasked architecture and drops those keys, so :func:`masked_from_pretrained`
loads the base model, masks the layers the checkpoint says were masked (each
has a ``<layer>.mask_mode`` entry) with the method they were saved with, and
loads their mask state.
"""
from __future__ import annotations

import contextlib
import glob
import json
import re
from pathlib import Path

from safetensors import safe_open
from torch import nn

from .ablation import set_ablation
from .mask_state import LEGACY_METHOD_KEY, saved_method
from .masked_forward import ABLATION_CODES
from .model import mask_model, masked_layers

_MASK_MODE = ".mask_mode"


def _checkpoint_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted({folder / name for name in weight_map.values()})
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json "
                            "(save with model.save_pretrained(folder))")


def _keys(files: list[Path]) -> dict[str, Path]:
    keys = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            keys.update({key: path for key in handle.keys()})
    return keys


def _mask_state_keys(model: nn.Module) -> set[str]:
    keys = set()
    for name, layer in masked_layers(model).items():
        keys.update(f"{name}.{k}" for k in layer.mask_state_names())
    return keys


@contextlib.contextmanager
def _ignoring_unexpected(model_class: type, patterns: list[str]):
    """transformers reads this class attribute when it builds the model; the
    mask keys are expected, so its load report should not call them unexpected."""
    had = "_keys_to_ignore_on_load_unexpected" in model_class.__dict__
    before = model_class.__dict__.get("_keys_to_ignore_on_load_unexpected")
    model_class._keys_to_ignore_on_load_unexpected = list(before or []) + patterns
    try:
        yield
    finally:
        if had:
            model_class._keys_to_ignore_on_load_unexpected = before
        else:
            del model_class._keys_to_ignore_on_load_unexpected


def _saved_method(folder: Path, keys: dict, prefixes: list[str]):
    """The mask method every masked layer of the checkpoint was saved with."""
    methods = {}
    for prefix in prefixes:
        key = next((prefix + "." + name for name in ("mask_method_name", LEGACY_METHOD_KEY)
                    if prefix + "." + name in keys), None)
        if key is None:
            raise ValueError(f"{folder}: {prefix}.mask_method_name is missing (a checkpoint from "
                             "before mask methods were saved); mask the model and "
                             "load_state_dict by hand")
        with safe_open(str(keys[key]), framework="pt") as handle:
            methods[prefix] = saved_method({key: handle.get_tensor(key)}, prefix + ".",
                                           f"{folder}: {prefix}.")
    distinct = set(methods.values())
    if len(distinct) > 1:
        raise ValueError(f"{folder}: the masked layers were saved with different mask methods "
                         f"{sorted(m.as_dict()['method'] for m in distinct)}; load them by hand")
    return distinct.pop()


def _saved_ablation(folder: Path, keys: dict, prefixes: list[str]) -> str:
    """The ablation the masked layers were saved with ("zero" when none saved one)."""
    names = {code: name for name, code in ABLATION_CODES.items()}
    found = {}
    for prefix in prefixes:
        key = prefix + ".ablation_code"
        if key not in keys:
            found[prefix] = "zero"
            continue
        with safe_open(str(keys[key]), framework="pt") as handle:
            code = int(handle.get_tensor(key))
        if code not in names:
            raise ValueError(f"{folder}: {key} holds {code}, not an ablation code")
        found[prefix] = names[code]
    distinct = sorted(set(found.values()))
    if len(distinct) > 1:
        raise ValueError(f"{folder}: the masked layers were saved with different ablations "
                         f"{distinct}; load them by hand (sf.nn.set_ablation per layer)")
    return distinct[0]


def masked_from_pretrained(model_class: type, folder, *, freeze_base: bool = True,
                           check_coverage: str = "first", **from_pretrained_kwargs) -> nn.Module:
    """Load a masked model saved with ``save_pretrained``: the same layers
    masked, with their logits, β and mode.  ``from_pretrained_kwargs`` go to
    ``model_class.from_pretrained`` (dtype, device_map, ...)."""
    folder = Path(folder)
    files = _checkpoint_files(folder)
    keys = _keys(files)
    prefixes = sorted(k[:-len(_MASK_MODE)] for k in keys if k.endswith(_MASK_MODE))
    if not prefixes:
        raise ValueError(f"{folder}: the checkpoint holds no masked layers (no '*{_MASK_MODE}' "
                         "entries); load it with from_pretrained")
    method = _saved_method(folder, keys, prefixes)
    # A masked layer's own keys the plain model does not know are its mask state.
    ignore = [rf"{re.escape(p)}\.[^.]+$" for p in prefixes]
    with _ignoring_unexpected(model_class, ignore):
        model = model_class.from_pretrained(str(folder), **from_pretrained_kwargs)
    mask_model(model, include=[glob.escape(p) for p in prefixes], freeze_base=freeze_base,
               check_coverage=check_coverage, method=method)
    ablation = _saved_ablation(folder, keys, prefixes)
    if ablation != "zero":
        set_ablation(model, ablation)
    wanted = _mask_state_keys(model)
    # a checkpoint of main up to 1ff13e0 names the method under its old key
    # (the layer reads either form: nn/mask_state.py)
    stored_as = {k: k for k in wanted}
    for prefix in prefixes:
        new, old = f"{prefix}.mask_method_name", f"{prefix}.{LEGACY_METHOD_KEY}"
        if new in wanted and new not in keys and old in keys:
            stored_as[new] = old
    missing = sorted(k for k in wanted if stored_as[k] not in keys)
    if missing:
        raise ValueError(f"{folder}: mask state missing from the checkpoint: {missing[:8]}")
    # Every key a masked layer saved of its own must be loaded: none may be dropped.
    own = re.compile("|".join(rf"{re.escape(p)}\.[^.]+$" for p in prefixes))
    plain = set(model.state_dict()) - wanted
    stored = set(stored_as.values())
    extra = sorted(k for k in keys if own.match(k) and k not in stored and k not in plain)
    if extra:
        raise ValueError(f"{folder}: the checkpoint holds mask state this version cannot place: "
                         f"{extra[:8]}")
    state = {}
    for path in sorted({keys[k] for k in stored}):
        with safe_open(str(path), framework="pt") as handle:
            state.update({k: handle.get_tensor(k) for k in stored if keys[k] == path})
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{folder}: unexpected mask state {result.unexpected_keys[:8]}")
    return model
