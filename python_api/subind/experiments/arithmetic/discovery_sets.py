"""The arithmetic experiment's data and model for ``subind discover``:

    subind discover --model entry:subind.experiments.arithmetic.discovery_sets:quick_gpt2 \\
        --weights OUT/base/L2/model.safetensors --data 'experiment:arithmetic/a*b' …

``experiment:arithmetic/EXPR`` gives rows ``a b sep c`` of the computation EXPR
(e.g. ``a*b``, ``a``) over the quick preset's numbers — 10,000 for training and
2,000 held out, drawn like the experiment's own subtask sets — scored by the
experiment's last-token task."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ...engine.data_sources import DataSpec
from . import data as A
from .experiment import config_for, make_model
from .task import LastTokenTask

TRAIN_ROWS, EVAL_ROWS = 10_000, 2_000


class Rows(Dataset):
    """One token row per sample (the last-token task's batches are row tensors)."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]


def discovery_sets(expression: str) -> DataSpec:
    cfg = config_for("quick")
    vocab = A.Vocabulary(cfg.n_numbers, cfg.p)
    return DataSpec(Rows(A.random_set(expression, vocab, TRAIN_ROWS, seed=2)),
                    Rows(A.random_set(expression, vocab, EVAL_ROWS, seed=3)), LastTokenTask())


def quick_gpt2() -> torch.nn.Module:
    """The quick preset's 2-layer GPT-2 (random initialisation: pass --weights)."""
    return make_model(config_for("quick"), n_layer=2, seed=0)
