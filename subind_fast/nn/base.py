"""The base of every masked layer: its mask state and queries
(nn/mask_state.py), its forward (nn/masked_forward.py) and its export to the
plain module (nn/plain_export.py)."""
from __future__ import annotations

from .mask_state import MaskState
from .masked_forward import MaskedForward
from .plain_export import PlainExport


class MaskedWeightMixin(MaskState, MaskedForward, PlainExport):
    """Mixed in before the plain module type by every masked layer class
    (nn/layers.py, nn/attention.py); ``isinstance(m, MaskedWeightMixin)`` is
    how a masked layer is recognised."""
