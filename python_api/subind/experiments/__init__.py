"""One package per experiment.  Each exposes ``NAME`` (what its results
directories' manifests say), ``register(subparsers)`` (its CLI commands) and
``report(out) -> (markdown, figure paths)``, and may offer
``discovery_sets(which) -> engine.data_sources.DataSpec`` for ``subind discover``."""
import importlib

EXPERIMENTS = ("arithmetic", "vision")


def load(name: str):
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; this version knows {list(EXPERIMENTS)}")
    return importlib.import_module(f"{__name__}.{name}")
