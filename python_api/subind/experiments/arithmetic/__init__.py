"""The arithmetic Subtask Induction experiment (paper §4, App. B): `subind
arithmetic` runs it (commands/arithmetic.py); its expressions are data sets
for `subind discover` (discovery_sets)."""
from .discovery_sets import discovery_sets
from .report import report

NAME = "arithmetic"

__all__ = ["NAME", "discovery_sets", "report"]
