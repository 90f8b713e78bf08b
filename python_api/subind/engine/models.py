"""Where a model comes from, for any command that takes one:

* ``timm:NAME``        a timm architecture built from its config (no download),
* ``hf:DIR``           a transformers model from a local directory: with its
                       weights (``from_pretrained``) or from its config.json only,
* ``entry:MOD:FUNC``   ``MOD.FUNC()``, any function that returns an nn.Module;

plus the weights to load: a state-dict file (safetensors or torch; optional
for an entry point, which may load its own), or ``random`` to keep the fresh
initialisation on purpose (for benchmarks and tests; discovering a subnetwork
needs a trained model).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

import torch
from torch import nn

RANDOM_WEIGHTS = "random"
HF_CLASSES = {"causal-lm": "AutoModelForCausalLM",
              "image-classification": "AutoModelForImageClassification",
              "sequence-classification": "AutoModelForSequenceClassification"}


def load_state_dict_file(path: Path) -> dict:
    """A state dict from a safetensors or torch file (common checkpoint
    wrappers and DDP's ``module.`` prefix removed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors, pickle and zip each raise their own kind
        raise ValueError(f"weights file {path} cannot be read: it is damaged, truncated or not "
                         f"a state dict ({type(err).__name__}: {err})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def save_model_file(model: nn.Module, path: Path) -> Path:
    """``model``'s weights as safetensors (tied weights stored once), written
    atomically: a stage's cached model."""
    from safetensors.torch import save_model

    from subind_fast.atomic import atomic_write

    return atomic_write(path, lambda tmp: save_model(model, str(tmp)))


def load_model_file(model: nn.Module, path: Path, device: str = "cpu") -> nn.Module:
    """Weights written by :func:`save_model_file` into ``model`` (strict)."""
    from safetensors.torch import load_model

    load_model(model, str(path), device=device)
    return model


def load_weights(model: nn.Module, path: Path, origin: str) -> None:
    """Load a state-dict file into ``model``; every tensor must fit.  A tied
    parameter stored once (safetensors' ``save_model``) counts as present
    under each of its names."""
    from subind_fast.naming import parameter_names

    state = load_state_dict_file(Path(path))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # tensors of another shape: torch lists each one
        raise ValueError(f"{path} does not fit {origin}: {err}") from None
    canonical = parameter_names(model).canonical_of
    stored = {canonical.get(k, k) for k in state}
    missing = [m for m in missing if canonical.get(m, m) not in stored]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit {origin}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def entry_point(spec: str) -> nn.Module:
    """'package.module:function' → function() (a model)."""
    model = call_entry_point(spec, "a model")
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def call_entry_point(spec: str, what: str):
    """'package.module:function' → function(), with errors that name the spec."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"an entry point must look like 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"entry point {spec}: cannot import {module_name!r} ({err})") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise ValueError(f"entry point {spec}: {module_name} has no function {attr!r} "
                         f"(it should return {what})")
    return function()


def timm_model(name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name)`` without weights; an unknown name is an error
    listing the names that come closest."""
    import difflib

    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(f"timm has no model {name!r}" + (
            f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"))
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as err:  # a keyword the architecture does not take
        raise ValueError(f"timm model {name!r} does not take these --model-kwargs "
                         f"{kwargs}: {err}") from None


def _hf_model(directory: Path, weights: Optional[str], hf_class: str, kwargs: dict) -> nn.Module:
    import transformers

    if hf_class not in HF_CLASSES:
        raise ValueError(f"--hf-class must be one of {sorted(HF_CLASSES)}, got {hf_class!r}")
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} has no config.json (hf:DIR needs a local "
                                "transformers model directory)")
    auto = getattr(transformers, HF_CLASSES[hf_class])
    has_weights = any(directory.glob("*.safetensors")) or any(directory.glob("*.bin"))
    if weights is None:
        if not has_weights:
            raise ValueError(f"hf:{directory} holds a config.json but no weights "
                             "(*.safetensors, *.bin): pass --weights FILE, or --weights "
                             f"{RANDOM_WEIGHTS} to use the random initialisation on purpose")
        try:
            model, info = auto.from_pretrained(str(directory), local_files_only=True,
                                               output_loading_info=True, **kwargs)
        except Exception as err:  # transformers' own checks raise several kinds
            raise ValueError(f"hf:{directory}: its model cannot be loaded"
                             + (f" with --model-kwargs {kwargs}" if kwargs else "")
                             + f" ({type(err).__name__}: {str(err)[:500]})") from None
        unfit = {kind: info.get(kind) for kind in ("missing_keys", "mismatched_keys",
                                                   "unexpected_keys") if info.get(kind)}
        if unfit:
            raise ValueError(
                f"hf:{directory}: its weights do not fit the model built from its config"
                + (f" and --model-kwargs {kwargs}" if kwargs else "") + ": " + "; ".join(
                    f"{kind.replace('_', ' ')} {sorted(map(str, keys))[:5]}"
                    + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                    for kind, keys in unfit.items())
                + f"; a partly random model is refused (use --weights {RANDOM_WEIGHTS} to "
                "start from the random initialisation on purpose)")
        return model
    try:
        config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True,
                                                         **kwargs)
        return auto.from_config(config)
    except Exception as err:  # transformers' own checks raise several kinds
        raise ValueError(f"hf:{directory}: no model can be built from its config.json"
                         + (f" with --model-kwargs {kwargs}" if kwargs else "")
                         + f" ({type(err).__name__}: {err})") from None


def check_finite(model: nn.Module, origin: str) -> nn.Module:
    """``model`` when every parameter and buffer is finite; else an error
    naming where the weights came from and the first tensors with NaN or inf."""
    bad = [name for name, tensor in (*model.named_parameters(), *model.named_buffers())
           if tensor.is_floating_point() and not tensor.is_meta
           and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise ValueError(f"{origin}: {len(bad)} tensor(s) hold NaN or inf values, e.g. "
                         f"{bad[:5]}; a discovery on them would train on NaN losses")
    return model


def build_model(spec: str, weights: Optional[str] = None, hf_class: str = "causal-lm",
                model_kwargs: Optional[dict] = None) -> nn.Module:
    """The model ``spec`` names (see module docstring), with ``weights``
    loaded; weights with NaN or inf are refused, naming their origin."""
    model = _built(spec, weights, hf_class, model_kwargs)
    if weights == RANDOM_WEIGHTS:  # a fresh initialisation: nothing read from a file
        return model
    return check_finite(model, f"--weights {weights}" if weights else f"--model {spec}")


def _built(spec: str, weights: Optional[str], hf_class: str,
           model_kwargs: Optional[dict]) -> nn.Module:
    kind, _, rest = spec.partition(":")
    kwargs = dict(model_kwargs or {})
    if kind == "entry":
        model = entry_point(rest)
        if weights not in (None, RANDOM_WEIGHTS):
            load_weights(model, Path(weights), spec)
        return model
    if kind == "timm":
        model = timm_model(rest, **kwargs)
    elif kind == "hf":
        model = _hf_model(Path(rest), weights, hf_class, kwargs)
        if weights is None:
            return model
    else:
        raise ValueError(f"--model must be timm:NAME, hf:DIR or entry:MODULE:FUNCTION, got {spec!r}")
    if weights is None:
        raise ValueError(f"--model {spec} needs --weights FILE (nothing is downloaded), or "
                         f"--weights {RANDOM_WEIGHTS} to keep the random initialisation")
    if weights != RANDOM_WEIGHTS:
        load_weights(model, Path(weights), spec)
    return model


def check_hf_class_applies(model_spec: str) -> None:
    """--hf-class chooses a transformers auto class: only ``hf:`` models have one."""
    if not model_spec.startswith("hf:"):
        raise ValueError(f"--hf-class applies to hf:DIR models, not --model {model_spec}")


def input_size(model: nn.Module) -> Optional[tuple]:
    """(C, H, W) a vision model expects: timm's data config, with the image size
    the model was actually built for (``img_size=`` changes the model, not its
    pretrained_cfg); None when unknown."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "input_size" not in cfg:
        return None
    channels, height, width = cfg["input_size"]
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if built is not None:
        height, width = (built, built) if isinstance(built, int) else tuple(built)
    return int(channels), int(height), int(width)
