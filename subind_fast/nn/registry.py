"""Which masked layer replaces which module type.  Each masked layer class
registers itself with ``@masks(PlainType)`` (or ``@masks("package.module.Type")``
for a type from an optional package, resolved once that package is
imported), so adding a layer type touches only its own module.

Supported types: nn.Linear, nn.Conv1d/2d/3d, nn.MultiheadAttention and
transformers' GPT-2 Conv1D — and their subclasses (timm's ``Linear``,
nn.MultiheadAttention's ``NonDynamicallyQuantizableLinear``, a user's own).
A subclass gets a masked class made for it on first use,
``Masked<Subclass>``, which is still an instance of the subclass.  Its
forward:

* the masked layer's, when the subclass does not override forward or
  overrides it with the same computation (``SAME_FORWARD``);
* the masked layer's after an input transform (``INPUT_TRANSFORMS``), when the
  subclass's forward is "transform the input, then the base computation"
  (timm's TF-style ``Conv2dSame``: pad, then convolve without padding);
* otherwise the subclass's own, which reaches the mask when it calls
  ``super().forward``.  If it computes from ``self.weight`` directly the mask
  never runs, and the coverage check (nn/coverage.py) raises naming the layer.

Made classes pickle and deep-copy by reference to the subclass they wrap.
"""
from __future__ import annotations

import sys
from functools import lru_cache
from typing import Callable, Optional, Union

from torch import nn

from .base import MaskedWeightMixin

# plain module type → its masked class, as the classes register themselves
_REGISTERED: dict[type, type] = {}
# "module.qualname" of a plain type in an optional package → its masked class
_REGISTERED_BY_NAME: dict[str, type] = {}


def masks(plain: Union[type, str]) -> Callable[[type], type]:
    """Class decorator: the decorated masked layer replaces modules of type
    ``plain`` (a type, or "module.qualname" of a type from an optional package)."""
    def register(cls: type) -> type:
        if not issubclass(cls, MaskedWeightMixin):
            raise TypeError(f"{cls.__name__} is not a masked layer (MaskedWeightMixin)")
        if isinstance(plain, str):
            _REGISTERED_BY_NAME[plain] = cls
        else:
            _REGISTERED[plain] = cls
        return cls

    return register

# Subclasses whose forward computes exactly their base's y = x·Wᵀ + b
# ("module.qualname"), so the masked forward may replace it.
SAME_FORWARD = {
    "timm.layers.linear.Linear",  # only adds a dtype cast under TorchScript
}



def _pad_same(module: nn.Module, x):
    """TensorFlow 'SAME' padding, as timm's Conv2dSame applies before its convolution."""
    from timm.layers.padding import pad_same

    return pad_same(x, module.weight.shape[-2:], module.stride, module.dilation)


# Subclasses whose forward is input → transform → the base computation ("module.qualname":
# transform(module, x)); the masked forward runs after the same transform.
INPUT_TRANSFORMS = {
    "timm.layers.conv2d_same.Conv2dSame": _pad_same,
}


def base_table() -> dict[type, type]:
    """Plain module type → its masked layer class (types of optional packages
    once those are imported: only such a model can hold them)."""
    table = dict(_REGISTERED)
    for qualified, cls in _REGISTERED_BY_NAME.items():
        module, _, name = qualified.rpartition(".")
        if module in sys.modules and hasattr(sys.modules[module], name):
            table[getattr(sys.modules[module], name)] = cls
    return table


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def masked_class_for(plain: type) -> Optional[type]:
    """The masked layer class for modules of type ``plain`` (None if unsupported)."""
    if issubclass(plain, MaskedWeightMixin):
        return None
    table = base_table()
    if plain in table:
        return table[plain]
    base = next((b for b in plain.__mro__[1:] if b in table), None)
    return None if base is None else _masked_subclass(plain, table[base], base)


def _rebuild(plain: type):
    cls = masked_class_for(plain)
    return cls.__new__(cls)


def _reduce(self, protocol):
    return _rebuild, (type(self)._plain,), self.__dict__.copy()


@lru_cache(maxsize=None)
def _masked_subclass(plain: type, masked_base: type, plain_base: type) -> type:
    own_forward = plain.forward is not plain_base.forward
    transform = INPUT_TRANSFORMS.get(_qualified(plain))
    ours_first = not own_forward or _qualified(plain) in SAME_FORWARD or transform is not None
    bases = (masked_base, plain) if ours_first else (plain, masked_base)
    namespace = {
        "__module__": __name__,
        "__doc__": f"{_qualified(plain)} with a continuous-sparsification weight mask "
                   f"({'masked' if ours_first else 'its own'} forward"
                   f"{', after ' + transform.__name__.strip('_') if transform else ''}).",
        "_plain": plain,
        "__reduce_ex__": _reduce,
    }
    if transform is not None:
        def forward(self, x):
            return masked_base.forward(self, transform(self, x))

        namespace["forward"] = forward
    return type(f"Masked{plain.__name__}", bases, namespace)
