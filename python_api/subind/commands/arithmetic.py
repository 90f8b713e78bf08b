"""`subind arithmetic`: the arithmetic experiment (paper §4, App. B), a
resumable, shardable sweep over (condition, layers, N, seed); every option
below with the paper's value as its default, and presets (smoke, quick,
paper) to start from."""
from __future__ import annotations

from ..experiments.arithmetic import experiment
from .sweep import SweepLaunch, run_experiment

HELP = "the arithmetic experiment (paper §4)"
OPTIONS = {"experiment": experiment.ArithmeticConfig, "launch": SweepLaunch}
PRESETS = experiment.PRESETS
DEFAULT_PRESET = "quick"
RESUMABLE = True


def run(parsed, argv) -> int:
    return run_experiment(parsed, argv, experiment.ArithmeticExperiment)
