"""Comparing subnetworks (Csordás et al., "Are Neural Nets Modular? Inspecting
Functional Modularity Through Differentiable Weight Masks", ICLR 2021): how
much two masks overlap, which weights a mask shares with others, whether a
function reuses the same weights in another context (P_reuse) or separate
functions use separate weights (P_specialize), and how stable a mask is
across seeds.

Every count is exact integer arithmetic on the packed bits (popcount of the
bytes; padding bits are 0), per parameter and over all parameters:

    IoU(A, B) = |A ∩ B| / |A ∪ B|           (1 when both are empty)
    IoM(A, B) = |A ∩ B| / min(|A|, |B|)      (intersection over minimum; 1 when both
                                             are empty, like IoU; 0 when only one is)
    shared(A → B) = |A ∩ B| / |A|            (the fraction of A's weights also in B)

Stability across seeds compares each pair of seeds' masks with the chance
level — the overlap two random masks of the same per-parameter sizes have in
expectation — and keeps the weights every seed (the core) and a majority of
seeds found.

Whether each of several subnetworks is its own subtask's is
subnetworks/specificity.py (re-exported here).

P_reuse of two masks of the same function (e.g. found in two contexts) is
shared weights as IoM — 1 means the smaller mask is entirely reused; P_specialize
of masks of two different functions is 1 − IoM — 1 means no weight is shared.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Mapping, Sequence

import torch

from ..bits import count_ones
from ..naming import block_of
from ..nn.heads import HeadSlicing, attention_heads  # noqa: F401 (attention_heads: re-exported)
from ..subnetwork import Subnetwork
from .specificity import Interval, Specificity, specificity  # noqa: F401 (re-exported)

TOTAL = "total"


@dataclass(frozen=True)
class Overlap:
    """Counts of two masks over one parameter (or all of them)."""
    size: int          # entries of the parameter(s)
    a: int             # |A|
    b: int             # |B|
    both: int          # |A ∩ B|
    either: int        # |A ∪ B|

    @property
    def iou(self) -> float:
        return self.both / self.either if self.either else 1.0

    @property
    def iom(self) -> float:
        smaller = min(self.a, self.b)
        if not smaller:  # two empty masks are the same mask, as IoU says
            return 1.0 if self.a == self.b else 0.0
        return self.both / smaller

    @property
    def shared_a(self) -> float:
        """|A ∩ B| / |A|."""
        return self.both / self.a if self.a else 0.0

    @property
    def shared_b(self) -> float:
        return self.both / self.b if self.b else 0.0

    def __add__(self, other: "Overlap") -> "Overlap":
        return Overlap(*(x + y for x, y in zip(self.counts(), other.counts())))

    def counts(self) -> tuple[int, int, int, int, int]:
        return self.size, self.a, self.b, self.both, self.either


def overlap(a: Subnetwork, b: Subnetwork) -> dict[str, Overlap]:
    """{parameter: Overlap, …, "total": Overlap over all parameters} of two
    subnetworks of the same model (same parameters and shapes)."""
    both, either = a & b, a | b  # checks that they cover the same parameters
    table = {}
    for name in a.names():
        table[name] = Overlap(a.shape(name).numel(), count_ones(a.packed(name)),
                              count_ones(b.packed(name)), count_ones(both.packed(name)),
                              count_ones(either.packed(name)))
    total = Overlap(0, 0, 0, 0, 0)
    for row in table.values():
        total = total + row
    table[TOTAL] = total
    return table


def iom(a: Subnetwork, b: Subnetwork) -> float:
    """Intersection over the smaller mask, over all parameters."""
    return overlap(a, b)[TOTAL].iom


def p_reuse(a: Subnetwork, b: Subnetwork) -> float:
    """Masks of the same function: the share of the smaller one reused by the other (IoM)."""
    return iom(a, b)


def p_specialize(a: Subnetwork, b: Subnetwork) -> float:
    """Masks of two different functions: 1 − IoM (1: nothing shared)."""
    return 1.0 - iom(a, b)


def shared_with_others(masks: Mapping[str, Subnetwork]) -> dict[str, dict[str, float]]:
    """{mask label: {parameter: fraction of this mask's weights that lie in the
    union of all the other masks, …, "total": …}} (Csordás et al.'s sharing
    plot).  Needs at least two masks."""
    if len(masks) < 2:
        raise ValueError(f"shared_with_others needs at least two subnetworks, got {len(masks)}")
    out = {}
    for label, mask in masks.items():
        others = None
        for other_label, other in masks.items():
            if other_label != label:
                others = other if others is None else others | other
        out[label] = {name: row.shared_a for name, row in overlap(mask, others).items()}
    return out


def chance_overlap(a: Subnetwork, b: Subnetwork) -> Overlap:
    """The expected Overlap, over all parameters, of two masks drawn uniformly
    at random with A's and B's number of kept weights in every parameter:
    E|A ∩ B| = Σ |A_p|·|B_p| / n_p per parameter p (hypergeometric), rounded
    to the nearest count.  Its IoU is the chance level of a stability or
    overlap: a mask keeping 30 % of every layer shares IoU ≈ 0.18 with
    another such mask by chance alone."""
    rows = overlap(a, b)
    expected = sum(r.a * r.b / r.size for name, r in rows.items() if name != TOTAL and r.size)
    total = rows[TOTAL]
    both = round(expected)
    return Overlap(total.size, total.a, total.b, both, total.a + total.b - both)


def votes(masks: Sequence[Subnetwork], at_least: int) -> Subnetwork:
    """The weights kept by at least ``at_least`` of the masks (1: their union,
    len(masks): their intersection)."""
    if not 1 <= at_least <= len(masks):
        raise ValueError(f"at_least must be in [1, {len(masks)}], got {at_least}")
    first = masks[0]
    for other in masks[1:]:
        first & other  # raises unless they cover the same parameters
    counts = {name: sum(m.mask(name).to(torch.int32) for m in masks) for name in first.names()}
    return Subnetwork.from_masks({name: c >= at_least for name, c in counts.items()},
                                 metadata={"votes": f"kept by >= {at_least} of {len(masks)}"})


@dataclass(frozen=True)
class Stability:
    """How alike the masks of one subtask found with different seeds are:
    every pair's Overlap over all parameters and per block (naming.block_of),
    the chance level of each pair (:func:`chance_overlap`), and the weights
    every seed kept (``core``) and more than half of them kept (``majority``)."""
    labels: tuple[str, ...]
    pairs: dict[tuple[str, str], Overlap]
    chance: dict[tuple[str, str], Overlap]
    by_block: dict[tuple[str, str], dict[str, Overlap]]
    core: Subnetwork
    majority: Subnetwork

    def iou(self) -> list[float]:
        return [row.iou for row in self.pairs.values()]

    def chance_iou(self) -> list[float]:
        return [row.iou for row in self.chance.values()]

    @property
    def mean_iou(self) -> float:
        return sum(self.iou()) / len(self.pairs)

    @property
    def mean_chance_iou(self) -> float:
        return sum(self.chance_iou()) / len(self.chance)


def stability(masks: Mapping[str, Subnetwork] | Sequence[Subnetwork]) -> Stability:
    """:class:`Stability` of masks found with different seeds, labelled by the
    mapping's keys (a sequence's positions).  Needs at least two masks."""
    if len(masks) < 2:
        raise ValueError(f"stability needs at least two subnetworks, got {len(masks)}")
    named = dict(masks) if isinstance(masks, Mapping) else {str(i): m for i, m in
                                                            enumerate(masks)}
    labels = tuple(named)
    pairs, chance, by_block = {}, {}, {}
    for i, j in combinations(labels, 2):
        pairs[(i, j)] = overlap(named[i], named[j])[TOTAL]
        chance[(i, j)] = chance_overlap(named[i], named[j])
        by_block[(i, j)] = overlap_by_group(named[i], named[j])
    seeds = list(named.values())
    return Stability(labels, pairs, chance, by_block, core=votes(seeds, len(seeds)),
                     majority=votes(seeds, len(seeds) // 2 + 1))


def removal_controls(subnetwork: Subnetwork, seed: int = 0) -> dict[str, Subnetwork]:
    """What an inverse-mask test removes: the subnetwork itself and, as
    controls, a random set and a sample of its complement of the same size
    per parameter (zero them with ``Subnetwork.ablate(model, "keep")`` applied
    to the complement, i.e. ``(~s).ablate(model, "keep")``, or
    ``s.ablate(model, "zero")``).  In the parameters where the subnetwork keeps
    more than half (``Subnetwork.complement_shortfall``) the complement control
    is not size-matched: it removes that parameter's whole complement."""
    return {"subnetwork": subnetwork, "random": subnetwork.random_like(seed),
            "complement": subnetwork.complement_sample(seed, where_short="whole")}


def inverse_mask_test(model, subnetwork: Subnetwork, evaluate, seed: int = 0,
                      ablation: str = "zero", reference=None, forward=None) -> dict[str, float]:
    """Accuracy (``evaluate(model) -> float``) of the intact model and of copies
    with the subnetwork's weights removed, and with a random and a complement
    set of the same per-parameter size removed (``model`` is not modified).

    ``ablation`` says what removed weights see (nn/ablation.py): ``zero``
    (they are zeroed), ``mean`` (the mean input over ``reference``, batches
    run by ``forward(model, batch)``, default ``model(batch)``), or
    ``corrupted`` (each forward's input resampled within its batch,
    sf.nn.resample)."""
    if ablation not in ("zero", "mean", "corrupted"):
        raise ValueError(f"the inverse-mask test's ablation must be 'zero', 'mean' or "
                         f"'corrupted' (a learned one needs training), got {ablation!r}")
    if ablation == "mean" and reference is None:
        raise ValueError("ablation 'mean' needs reference= (the batches whose mean input the "
                         "removed weights see)")
    results = {"intact": evaluate(model)}
    for label, removed in removal_controls(subnetwork, seed).items():
        results[f"without {label}"] = evaluate(
            _without(model, removed, ablation, reference, forward))
    return results


def _without(model, removed: Subnetwork, ablation: str, reference, forward):
    """A copy of ``model`` with ``removed``'s weights removed under ``ablation``."""
    import copy

    ablated = copy.deepcopy(model)
    if ablation == "zero":
        return removed.ablate(ablated, "zero")
    from .. import nn as snn
    from ..naming import parameter_names

    kept = ~removed
    table = parameter_names(ablated)
    covering = [name for name, module in ablated.named_modules()
                if snn.masked_class_for(type(module)) is not None
                and any(table.name_of(p) in kept for p in module.parameters(recurse=False))]
    snn.mask_model(ablated, include=covering, subnetwork=kept)
    if ablation == "mean":
        snn.set_ablation(ablated, "mean", batches=reference,
                         **({"forward": forward} if forward is not None else {}))
    else:
        snn.set_ablation(ablated, "corrupted")
        snn.record_corrupted_before_each_forward(ablated)
    return ablated


def overlap_by_group(a: Subnetwork, b: Subnetwork, group=block_of) -> dict[str, Overlap]:
    """:func:`overlap` summed over the parameters of each group,
    ``group(name) -> str`` (by default the block, naming.block_of)."""
    groups: dict[str, Overlap] = {}
    for name, row in overlap(a, b).items():
        if name != TOTAL:
            key = group(name)
            groups[key] = groups[key] + row if key in groups else row
    return groups


# ------------------------------------------------------------ attention heads
def _per_head(mask, slicing: HeadSlicing):
    """Counts of kept entries per head of one weight's bool mask."""
    moved = mask.movedim(slicing.axis, 0)
    return moved.reshape(slicing.chunks, slicing.heads, -1).sum(dim=(0, 2))


def head_overlap(a: Subnetwork, b: Subnetwork, heads: Mapping[str, Sequence[HeadSlicing]]
                 ) -> dict[tuple[str, int], Overlap]:
    """{(attention module, head): Overlap of A and B over that head's weights in
    every projection of the module}.  Pass the same subnetwork twice for one
    subnetwork's per-head density."""
    out: dict[tuple[str, int], Overlap] = {}
    for module, slices in heads.items():
        for slicing in slices:
            if slicing.parameter not in a or slicing.parameter not in b:
                continue  # a weight the subnetworks do not cover
            ma, mb = a.mask(slicing.parameter), b.mask(slicing.parameter)
            size = ma.numel() // slicing.heads
            counts = [_per_head(m, slicing) for m in (ma, mb, ma & mb, ma | mb)]
            for head in range(slicing.heads * slicing.group):
                row = Overlap(size, *(int(c[head // slicing.group]) for c in counts))
                key = (module, head)
                out[key] = out[key] + row if key in out else row
    return out
