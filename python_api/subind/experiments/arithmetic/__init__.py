"""The arithmetic Subtask Induction experiment (paper §4, App. B)."""
from .cli import register
from .report import report

NAME = "arithmetic"

__all__ = ["NAME", "register", "report"]
