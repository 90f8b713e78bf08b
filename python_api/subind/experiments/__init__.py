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


def discovery_sets(name: str, which: str):
    """The data set ``which`` that experiment ``name`` offers to commands taking
    any data (``--data experiment:NAME/WHICH``)."""
    module = load(name)
    if not hasattr(module, "discovery_sets"):
        raise ValueError(f"the {name} experiment offers no data sets for discover")
    return module.discovery_sets(which)
