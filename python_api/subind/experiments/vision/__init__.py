"""The vision Subtask Induction experiment (paper §5, App. C): `subind
vision` runs it (commands/vision.py) on the synthetic stand-in or on
16-class ImageNet; its images are data sets for `subind discover`
(discovery_sets).  The shape-bias tools it uses are the shape_bias package."""
from .discovery_sets import discovery_sets
from .report import report

NAME = "vision"

__all__ = ["NAME", "discovery_sets", "report"]
