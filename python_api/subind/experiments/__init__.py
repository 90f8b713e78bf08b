"""One package per experiment.  Each exposes ``NAME`` (what its results
directories' manifests say), ``report(out) -> (markdown, figure paths)``, and may offer
``discovery_sets(which) -> engine.data_sources.DataSpec`` for ``subind discover``."""
import importlib

EXPERIMENTS = ("arithmetic", "vision")


def load(name: str):
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; this version knows {list(EXPERIMENTS)}")
    return importlib.import_module(f"{__name__}.{name}")


def reporter(name: str):
    """``report(out) -> (markdown, figure paths)`` of the results directories
    whose manifest names ``name``: an experiment's, `subind discover`'s
    (engine/discovery_results.py) or `subind analyze`'s
    (engine/analysis_results.py); None for a command that writes its outputs
    itself."""
    from ..engine import analysis_results, discovery_results

    if name == discovery_results.EXPERIMENT:
        return discovery_results.report
    if name == analysis_results.EXPERIMENT:
        return analysis_results.report
    return load(name).report if name in EXPERIMENTS else None


def discovery_sets(name: str, which: str):
    """The data set ``which`` that experiment ``name`` offers to commands taking
    any data (``--data experiment:NAME/WHICH``)."""
    module = load(name)
    if not hasattr(module, "discovery_sets"):
        raise ValueError(f"the {name} experiment offers no data sets for discover")
    return module.discovery_sets(which)


def data_for(spec: str, model, size=None, mean=None, std=None):
    """engine.data_sources.resolve with the experiments' data sets
    (``experiment:NAME/WHICH``) besides the engine's own kinds."""
    from ..engine.data_sources import resolve

    return resolve(spec, model, discovery_sets, size, mean, std)
