"""nn.MultiheadAttention with masks on its input projection (``in_proj_weight``,
or ``q/k/v_proj_weight`` when key/value dimensions differ) and on its output
projection (``out_proj``, a masked Linear).

nn.MultiheadAttention reads ``in_proj_weight`` and ``out_proj.weight``
directly, so masking its Linear child alone would change nothing.  Here the
masked weights W_eff = θ ⊙ m are formed by the fused mask op (recomputed in
backward, never stored by it) and handed to F.multi_head_attention_forward,
which projects with F.linear: unlike the fused linear layers, that F.linear
keeps W_eff for backward (2–4 bytes per attention weight).
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from .heads import head_units
from .layers import _FromModule
from .base import MaskedWeightMixin
from .mask_state import DEFAULT_MASK_INIT, MaskInit
from .methods import as_method
from .registry import masked_class_for, masks

_SEPARATE = (("q_proj_weight", "q_proj_logits"), ("k_proj_weight", "k_proj_logits"),
             ("v_proj_weight", "v_proj_logits"))
_PACKED = (("in_proj_weight", "in_proj_logits"),)


def _sequence_first(query: Tensor, key: Tensor, value: Tensor):
    """Batch-first inputs transposed, keeping which of them are one tensor
    (F.multi_head_attention_forward projects a shared tensor once)."""
    done: dict[int, Tensor] = {}

    def transpose(t: Tensor) -> Tensor:
        if id(t) not in done:
            done[id(t)] = t.transpose(0, 1)
        return done[id(t)]

    return transpose(query), transpose(key), transpose(value)


@masks(nn.MultiheadAttention)
class MaskedMultiheadAttention(_FromModule, MaskedWeightMixin, nn.MultiheadAttention):
    """nn.MultiheadAttention with continuous-sparsification masks on its
    projection weights (see module docstring)."""

    _plain = nn.MultiheadAttention

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim=None, vdim=None,
                 batch_first: bool = False, *, init: MaskInit = DEFAULT_MASK_INIT,
                 beta: Optional[float] = None, mode: Optional[str] = None,
                 freeze_weight: bool = True, method=None, device=None, dtype=None):
        nn.MultiheadAttention.__init__(self, embed_dim, num_heads, dropout, bias, add_bias_kv,
                                       add_zero_attn, kdim, vdim, batch_first, device=device,
                                       dtype=dtype)
        self._setup_mask(init, beta, mode, freeze_weight, method)

    @property
    def masked_weights(self):
        return _PACKED if self._qkv_same_embed_dim else _SEPARATE

    def _setup_mask(self, init, beta, mode, freeze_weight, method=None, heads=None):
        if heads is None and as_method(method or "continuous").granularity == "head":
            heads = head_units(self)  # built directly, not through mask_model
        super()._setup_mask(init, beta, mode, freeze_weight, method, heads)
        if self.mask_method.n_samples > 1:
            # The projections are formed once per forward (one mask sample each).
            raise ValueError("MaskedMultiheadAttention draws one mask sample per forward; "
                             "use n_samples=1 (or exclude the attention module)")
        if not isinstance(self.out_proj, MaskedWeightMixin):
            self.out_proj = masked_class_for(type(self.out_proj)).from_module(
                self.out_proj, init=init, beta=beta, mode=mode, freeze_weight=freeze_weight,
                method=as_method(self.mask_method), heads=heads)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Optional[Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False):
        projections = {name: self._mask_weight(name) for name, _ in self.masked_weights}
        out_weight = self.out_proj.masked_weight()
        batch_first = self.batch_first and query.dim() == 3
        if batch_first:
            query, key, value = _sequence_first(query, key, value)
        output, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads,
            projections.get("in_proj_weight"), self.in_proj_bias, self.bias_k, self.bias_v,
            self.add_zero_attn, self.dropout, out_weight, self.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask,
            use_separate_proj_weight=not self._qkv_same_embed_dim,
            q_proj_weight=projections.get("q_proj_weight"),
            k_proj_weight=projections.get("k_proj_weight"),
            v_proj_weight=projections.get("v_proj_weight"),
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        return (output.transpose(0, 1) if batch_first else output), weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"batch_first={self.batch_first}, {self._mask_repr()}")
