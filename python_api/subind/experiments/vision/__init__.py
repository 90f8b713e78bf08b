"""The vision Subtask Induction experiment (paper §5, App. C) and its tools:
`subind vision` (the experiment), `subind shape-bias` (a classifier's shape
bias on Geirhos-layout stimuli), `subind mean-pool` (shape-only images)."""
from . import shape_bias_cli

NAME = "vision"


def register(subparsers) -> None:
    shape_bias_cli.register(subparsers)


def report(out):
    from .report import report as write_report

    return write_report(out)


__all__ = ["NAME", "register", "report"]
