"""The `subind` command line: one module per command in this package.  A
command module has ``HELP`` (its line in `subind --help`), ``OPTIONS`` (group
name → the dataclass declaring its options: the parser, defaults, help,
``--config`` files and presets all come from it; engine/options.py),
optionally ``PRESETS``/``DEFAULT_PRESET`` and ``RESUMABLE``, and
``run(parsed, argv)``.  ``python -m subind ARGS`` and the `subind` script both
run ``main``; the launchers (``--jobs``, ``--slurm``, ``--submitit``)
re-enter through ``python -m subind`` with argv."""
from __future__ import annotations

import importlib
import sys
import warnings

from ..engine import options

# command → module, in the order `subind --help` lists them
COMMANDS = {"arithmetic": "arithmetic", "vision": "vision", "discover": "discover",
            "analyze": "analyze", "plan-memory": "plan_memory", "shape-bias": "shape_bias",
            "mean-pool": "mean_pool", "imagenet16": "imagenet16",
            "shape-subnetwork": "shape_subnetwork", "report": "report"}


def command(name: str):
    """The module of command ``name``."""
    return importlib.import_module(f"{__name__}.{COMMANDS[name]}")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: subind COMMAND [OPTIONS]   (subind COMMAND --help: its options)", "",
             "Subtask Induction experiments and tools:"]
    lines += [f"  {name.ljust(width)}  {command(name).HELP}" for name in COMMANDS]
    return "\n".join(lines)


def _plain_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as a user reads it: its message, not our source line."""
    return f"subind: warning: {message}\n"


def main(argv=None) -> int:
    before = warnings.formatwarning
    warnings.formatwarning = _plain_warning
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        warnings.formatwarning = before


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"{usage()}\nsubind: error: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    module = command(argv[0])
    try:
        try:
            parsed = options.parse(module.OPTIONS, argv[1:], prog=f"subind {argv[0]}",
                                   description=module.__doc__,
                                   presets=getattr(module, "PRESETS", None),
                                   default_preset=getattr(module, "DEFAULT_PRESET", None))
        except SystemExit as done:  # --help, or a message about a bad option (printed)
            return done.code
        return module.run(parsed, argv)
    except (ValueError, OSError, ImportError) as err:  # ImportError: a missing extra
        print(f"subind: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = ("; run the same command again to resume (finished work is kept)"
                  if getattr(module, "RESUMABLE", False) else "")
        print(f"subind: interrupted{resume}", file=sys.stderr)
        return 130
