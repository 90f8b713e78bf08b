"""Helpers every experiment's report uses: mean ± std cells, markdown
tables, and figures written atomically."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .files import atomic_write


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); a record's null
    (a number that was not defined, e.g. a shape bias without decisive
    images) counts as NaN, so the cell shows nan rather than a made-up value."""
    values = [math.nan if v is None else v for v in values]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def group(records: Iterable[dict], key: Callable[[dict], tuple],
          value: Callable[[dict], float]) -> dict[tuple, tuple[float, float, int]]:
    """{key: (mean, std, count)} of ``value`` over the records sharing a key."""
    cells = defaultdict(list)
    for r in records:
        cells[key(r)].append(value(r))
    return {k: mean_std(v) + (len(v),) for k, v in cells.items()}


def cell(stat, digits: int = 3, count: bool = True) -> str:
    if stat is None:
        return "–"
    mean, std, n = stat
    return f"{mean:.{digits}f} ± {std:.{digits}f}" + (f" (n={n})" if count else "")


def found_by(stage_record: Path) -> str:
    """How the subnetwork beside a discovery stage's record (``X.json`` →
    ``X.safetensors``) had its size chosen, from the file's own metadata: the
    λ the search picked, the target density, or a selection's density."""
    import subind_fast as sf

    meta = sf.Subnetwork.load(Path(stage_record).with_suffix(".safetensors")).metadata
    if meta.get("target_density") is not None:
        return f"target density {meta['target_density']:g}"
    if meta.get("method") in sf.selection.METHODS:
        return f"{meta['method']} selection, density {meta.get('density', float('nan')):g}"
    return f"λ = {meta.get('l0_lambda', float('nan')):g}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return Path(path)


def pyplot():
    """matplotlib.pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
