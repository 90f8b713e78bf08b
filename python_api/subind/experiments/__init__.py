"""One package per experiment.  Each exposes ``NAME`` (what its results
directories' manifests say), ``register(subparsers)`` (its CLI commands) and
``report(out) -> (markdown, figure paths)``."""
import importlib

EXPERIMENTS = ("arithmetic", "vision")


def load(name: str):
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; this version knows {list(EXPERIMENTS)}")
    return importlib.import_module(f"{__name__}.{name}")
