"""The vision Subtask Induction experiment (paper §5, App. C) and its tools:
`subind vision` (the experiment), `subind shape-bias` (a classifier's shape
bias on Geirhos-layout stimuli), `subind mean-pool` (shape-only images) and
`subind imagenet16` (16-class ImageNet from an ImageNet copy); its images
as data sets for `subind discover` (discovery_sets)."""
from . import cli, imagenet16, pooling_cli, real_subnetwork, shape_bias_cli
from .discovery_sets import discovery_sets
from .report import report

NAME = "vision"


def register(subparsers) -> None:
    cli.register(subparsers)
    shape_bias_cli.register(subparsers)
    pooling_cli.register(subparsers)
    imagenet16.register(subparsers)
    real_subnetwork.register(subparsers)


__all__ = ["NAME", "discovery_sets", "register", "report"]
