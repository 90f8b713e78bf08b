"""The arithmetic Subtask Induction experiment (paper §4, App. B)."""
from .cli import register
from .discovery_sets import discovery_sets
from .report import report

NAME = "arithmetic"

__all__ = ["NAME", "discovery_sets", "register", "report"]
