"""The vision experiment's images as data sets for ``subind discover --data
experiment:vision/SET`` (labels: the shape class; normalised like the
experiment's models expect): ``pooled`` (mean-pooled, shape-only) or
``original`` (shape and texture agree)."""
from __future__ import annotations

from torch.utils.data import TensorDataset

from ...engine.data_sources import DataSpec
from . import synthetic as S
from .task import MEAN, STD

SETS = {"pooled": "pooled", "original": "aligned"}
TRAIN_SAMPLES, EVAL_SAMPLES = 2048, 512


def discovery_sets(which: str) -> DataSpec:
    if which not in SETS:
        raise ValueError(f"experiment:vision/{which}: the vision experiment offers "
                         f"{sorted(SETS)}")

    def dataset(n, seed):
        images = S.make_set(SETS[which], n, seed)
        return TensorDataset((images.images - MEAN) / STD, images.shapes)

    return DataSpec(dataset(TRAIN_SAMPLES, 20), dataset(EVAL_SAMPLES, 21))
