"""`subind vision`: the vision experiment (paper §5, App. C), a resumable,
shardable sweep over (architecture, condition, N, seed) on the synthetic
stand-in or on 16-class ImageNet; every option below with the paper text's
value as its default, and presets (smoke, quick, full, paper) to start from."""
from __future__ import annotations

from ..experiments.vision import config
from .sweep import SweepLaunch, run_experiment

HELP = "the vision experiment (paper §5)"
OPTIONS = {"experiment": config.VisionConfig, "launch": SweepLaunch}
PRESETS = config.PRESETS
DEFAULT_PRESET = "quick"
RESUMABLE = True


def run(parsed, argv) -> int:
    from ..experiments.vision.experiment import VisionExperiment

    return run_experiment(parsed, argv, VisionExperiment)
