"""Where attention weights hold their heads: one table of the projections of
the attention modules people mask (GPT-2, timm, nn.MultiheadAttention,
LLaMA-style q/k/v/o with grouped-query attention, BERT/HF ViT), read from the
head counts the modules (or their configs) state.  Head-level analysis
(analysis.head_overlap) and head-level masks (granularity "head",
nn/model.py) both read it, so the two always agree on what a head is."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import Tensor, nn


@dataclass(frozen=True)
class HeadSlicing:
    """Where one attention weight holds its heads: along ``axis`` of the
    stored weight, ``chunks`` equal parts (3 for a packed q|k|v projection,
    else 1), each split into ``heads`` equal runs of rows or columns.  Under
    grouped-query attention a key/value projection holds fewer heads than the
    queries: each of its runs serves ``group`` consecutive query heads, and
    counts towards each of them (the weights every one of those heads reads)."""
    parameter: str
    axis: int
    chunks: int
    heads: int
    group: int = 1

    @property
    def runs(self) -> int:
        """Runs of rows or columns along ``axis``: one per head per chunk."""
        return self.chunks * self.heads


# (path under the attention module, axis of the stored weight, chunks, key/value)
_HEAD_PROJECTIONS = (
    ("c_attn.weight", 1, 3, False), ("c_proj.weight", 0, 1, False),  # GPT-2 Conv1D (in × out)
    ("qkv.weight", 0, 3, False), ("proj.weight", 1, 1, False),       # timm Attention
    ("in_proj_weight", 0, 3, False), ("out_proj.weight", 1, 1, False),  # nn.MultiheadAttention
    ("q_proj_weight", 0, 1, False), ("k_proj_weight", 0, 1, False),
    ("v_proj_weight", 0, 1, False),                                  # … with kdim/vdim ≠ embed_dim
    ("q_proj.weight", 0, 1, False), ("k_proj.weight", 0, 1, True),
    ("v_proj.weight", 0, 1, True), ("o_proj.weight", 1, 1, False),  # LLaMA/Qwen2/Gemma-style
    ("query.weight", 0, 1, False), ("key.weight", 0, 1, True),
    ("value.weight", 0, 1, True),                                    # BERT/ViT (HF)
)
_HEAD_COUNT_ATTRIBUTES = ("num_heads", "n_head", "num_attention_heads")
_KV_HEAD_COUNT_ATTRIBUTES = ("num_key_value_heads", "num_kv_heads", "n_kv_head")


def _count(module, attributes) -> int | None:
    """The first of ``attributes`` that ``module`` states as an int, on the
    module itself or (transformers ≥ 4.48 attention classes) on its config."""
    for owner in (module, getattr(module, "config", None)):
        for attribute in attributes:
            value = getattr(owner, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _head_counts(model: nn.Module) -> Iterator[tuple[str, nn.Module, int, int]]:
    """(name, module, query heads, key/value heads) of every module that states a head count."""
    for name, module in model.named_modules():
        heads = _count(module, _HEAD_COUNT_ATTRIBUTES)
        if not heads:
            continue
        kv_heads = _count(module, _KV_HEAD_COUNT_ATTRIBUTES) or heads
        if heads % kv_heads:
            raise ValueError(f"{name}: {heads} query heads cannot share {kv_heads} key/value "
                             "heads evenly")
        yield name, module, heads, kv_heads


def _head_weights(model: nn.Module) -> Iterator[tuple[str, Tensor, int, int, int, int]]:
    """(attention module name, weight, axis, chunks, heads, group) for every
    projection weight of every attention module that states a head count."""
    for name, module, heads, kv_heads in _head_counts(model):
        for path, axis, chunks, is_kv in _HEAD_PROJECTIONS:
            owner_path, _, attribute = path.rpartition(".")
            try:
                owner = module.get_submodule(owner_path) if owner_path else module
            except AttributeError:
                continue
            weight = getattr(owner, attribute, None)
            runs = kv_heads if is_kv else heads
            if not isinstance(weight, Tensor) or weight.dim() != 2 \
                    or weight.shape[axis] % (chunks * runs):
                continue
            yield name, weight, axis, chunks, runs, heads // runs


def attention_heads(model: nn.Module) -> dict[str, list[HeadSlicing]]:
    """{attention module name: where each of its weights holds its heads} for
    the attention modules of ``model`` that state a head count (timm, GPT-2 and
    other transformers, nn.MultiheadAttention), keyed by canonical weight
    names as Subnetworks use them."""
    from ..naming import parameter_names

    table = parameter_names(model)
    found: dict[str, list[HeadSlicing]] = {}
    for name, weight, axis, chunks, heads, group in _head_weights(model):
        found.setdefault(name, []).append(
            HeadSlicing(table.name_of(weight), axis, chunks, heads, group))
    return found


def head_units(model: nn.Module) -> dict[int, tuple[int, int]]:
    """{id(weight): (axis, runs)} for every attention projection weight: the
    axis of the stored weight that holds the heads and how many equal runs of
    rows or columns it has (one per head and chunk) — the layout of a
    head-level mask (one logit per run)."""
    units = {id(weight): (axis, chunks * heads)
             for _, weight, axis, chunks, heads, _ in _head_weights(model)}
    # Phi-3 packs q|k|v of unequal size (heads + 2 · key/value heads runs of
    # head_dim): a layout for masks, not a HeadSlicing (its chunks differ).
    for _, module, heads, kv_heads in _head_counts(model):
        packed = getattr(getattr(module, "qkv_proj", None), "weight", None)
        runs = heads + 2 * kv_heads
        if isinstance(packed, Tensor) and packed.dim() == 2 and packed.shape[0] % runs == 0:
            units[id(packed)] = (0, runs)
    return units
