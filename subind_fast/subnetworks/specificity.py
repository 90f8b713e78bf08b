"""Is each subnetwork its own subtask's?  Subnetworks found for different
subtasks of one model, each scored on every subtask alone (every other
weight the subnetworks cover zeroed) and removed (its own weights zeroed),
beside the intact model.

For subnetwork s with own subtask o among the subtasks T (|T| ≥ 2):

    score(s)         = alone_s(o) − mean_{t ≠ o} alone_s(t)
    removal_score(s) = drop_s(o) − mean_{t ≠ o} drop_s(t),  drop_s(t) = intact(t) − removed_s(t)

where each term is an accuracy on subtask t's evaluation examples.  When the
evaluators give each example's correctness (not only the accuracy), the
scores come with percentile bootstrap intervals over the examples: each
draw resamples every subtask's examples with replacement, the same resample
for the intact, alone and removed models on that subtask (they are scored on
the same examples, so their differences stay paired), independently across
subtasks (separate evaluation sets).  The interval is the sampling
uncertainty of the evaluation sets, not the variation over discovery seeds.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Union

import torch
from torch import Tensor

from ..subnetwork import Subnetwork

#: an evaluator's answer: an accuracy, or each example's correctness (bool, one per example)
Scored = Union[float, Tensor]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class Specificity:
    """Accuracies (``intact``: subtask -> the whole model's; ``alone`` and
    ``removed``: label -> subtask -> the model with only / without the
    subnetwork), each subnetwork's own subtask (``own``), and, when the
    evaluators scored each example, the examples' correctness (``examples``:
    ("intact", None, task), ("alone", label, task) or ("removed", label,
    task) -> bool tensor) from which :meth:`intervals` resamples."""
    own: dict[str, str]
    intact: dict[str, float]
    alone: dict[str, dict[str, float]]
    removed: dict[str, dict[str, float]]
    examples: Optional[dict[tuple, Tensor]] = field(default=None, repr=False)

    @staticmethod
    def _contrast(own: str, row: Mapping[str, float]) -> float:
        others = [v for task, v in row.items() if task != own]
        return row[own] - sum(others) / len(others)

    @property
    def score(self) -> dict[str, float]:
        return {label: self._contrast(own, self.alone[label]) for label, own in self.own.items()}

    @property
    def removal_score(self) -> dict[str, float]:
        return {label: self._contrast(own, {t: self.intact[t] - acc
                                            for t, acc in self.removed[label].items()})
                for label, own in self.own.items()}

    def intervals(self, draws: int = 2000, level: float = 0.95, seed: int = 0
                  ) -> Optional[dict[str, dict[str, Interval]]]:
        """{label: {"score": Interval, "removal_score": Interval}}, percentile
        bootstrap over the evaluation examples (module docstring); None when
        the evaluators gave accuracies only."""
        if self.examples is None:
            return None
        if draws < 1 or not 0 < level < 1:
            raise ValueError(f"draws must be >= 1 and level in (0, 1), got {draws}, {level}")
        generator = torch.Generator().manual_seed(seed)
        resampled: dict[tuple, Tensor] = {}  # key -> accuracy in each draw, float64
        for task in self.intact:
            correct = self.examples[("intact", None, task)]
            n = correct.numel()
            picks = torch.randint(0, n, (draws, n), generator=generator)
            counts = torch.zeros(draws, n, dtype=torch.float64).scatter_add_(
                1, picks, torch.ones(draws, n, dtype=torch.float64))
            for key, values in self.examples.items():
                if key[2] == task:
                    resampled[key] = counts @ values.to(torch.float64) / n
        tail = (1 - level) / 2
        out = {}
        for label, own in self.own.items():
            alone = {t: resampled[("alone", label, t)] for t in self.intact}
            drops = {t: resampled[("intact", None, t)] - resampled[("removed", label, t)]
                     for t in self.intact}
            out[label] = {}
            for name, row in (("score", alone), ("removal_score", drops)):
                values = self._contrast(own, row)
                low, high = torch.quantile(values, torch.tensor([tail, 1 - tail],
                                                                dtype=torch.float64)).tolist()
                out[label][name] = Interval(low, high)
        return out


def _accuracy(scored: Scored, what: str) -> tuple[float, Optional[Tensor]]:
    if isinstance(scored, Tensor):
        if scored.dim() != 1 or scored.dtype != torch.bool or scored.numel() == 0:
            raise ValueError(f"{what}: an evaluator gives an accuracy or a non-empty 1-D bool "
                             f"tensor (each example's correctness), got {scored.dtype} "
                             f"{tuple(scored.shape)}")
        scored = scored.cpu()
        return float(scored.double().mean()), scored
    return float(scored), None


def specificity(model, masks: Mapping[str, Subnetwork],
                evaluators: Mapping[str, Callable[[torch.nn.Module], Scored]],
                own: Mapping[str, str]) -> Specificity:
    """:class:`Specificity` of ``masks`` (label -> subnetwork) on the subtasks
    ``evaluators`` (subtask -> ``evaluate(model)``: an accuracy, or each
    example's correctness for intervals), each subnetwork's own subtask named
    by ``own`` (label -> subtask).  Needs two subtasks or more; ``model`` is
    not modified."""
    if len(evaluators) < 2:
        raise ValueError(f"specificity compares subtasks: it needs at least two, got "
                         f"{list(evaluators)}")
    missing = {label: task for label, task in own.items() if task not in evaluators}
    if set(own) != set(masks) or missing:
        raise ValueError(f"every subnetwork needs its own subtask among {list(evaluators)}; "
                         f"got {dict(own)} for {list(masks)}")
    examples: dict[tuple, Optional[Tensor]] = {}

    def scored(kind, label, variant) -> dict[str, float]:
        row = {}
        for task, evaluate in evaluators.items():
            row[task], examples[(kind, label, task)] = _accuracy(
                evaluate(variant), f"subtask {task}")
        return row

    intact = scored("intact", None, model)
    alone, removed = {}, {}
    for label, sub in masks.items():
        alone[label] = scored("alone", label, sub.ablate(copy.deepcopy(model), "keep"))
        removed[label] = scored("removed", label, sub.ablate(copy.deepcopy(model), "zero"))
    per_example = all(v is not None for v in examples.values())
    if per_example:
        sizes = {task: examples[("intact", None, task)].numel() for task in evaluators}
        for (kind, label, task), values in examples.items():
            if values.numel() != sizes[task]:
                raise ValueError(f"subtask {task}: the evaluator scored {values.numel()} "
                                 f"examples for {kind} {label or ''} but {sizes[task]} for "
                                 "the intact model; it must score the same examples each time")
    return Specificity(dict(own), intact, alone, removed, examples if per_example else None)
