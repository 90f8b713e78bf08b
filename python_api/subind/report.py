"""`subind report DIR`: the results of an arithmetic sweep as a markdown table
(test accuracy by number of disambiguation samples and condition, mean ± std
over seeds and layer counts), a PNG in the style of the paper's Figure 3, and a
Table-2-style table of subnetwork densities."""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from .engine import records as run_records
from .engine.files import atomic_write, atomic_write_text
from .experiment import RECORD_FIELDS


def load_records(out: Path) -> list[dict]:
    runs = Path(out) / "runs"
    if not runs.is_dir():
        raise FileNotFoundError(f"{out}: no runs/ directory (run `subind arithmetic --out {out}` first)")
    found = run_records.load_all(runs, RECORD_FIELDS)  # a malformed record names its file
    if not found:
        raise FileNotFoundError(f"{out}: no finished runs yet")
    return found


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def accuracy_table(records: list[dict]) -> tuple[list[int], list[str], dict]:
    cells = defaultdict(list)
    for r in records:
        cells[(r["n_disambiguation"], r["condition"])].append(r["test_accuracy"])
    ns = sorted({n for n, _ in cells})
    conditions = sorted({c for _, c in cells})
    return ns, conditions, {k: _mean_std(v) + (len(v),) for k, v in cells.items()}


def markdown(records: list[dict], out: Path) -> str:
    ns, conditions, stats = accuracy_table(records)
    lines = ["| N disambiguation | " + " | ".join(conditions) + " |",
             "|---|" + "---|" * len(conditions)]
    for n in ns:
        row = []
        for c in conditions:
            if (n, c) in stats:
                mean, std, count = stats[(n, c)]
                row.append(f"{mean:.3f} ± {std:.3f} (n={count})")
            else:
                row.append("–")
        lines.append(f"| {n} | " + " | ".join(row) + " |")
    table = "\n".join(lines)
    densities = []
    for path in sorted((Path(out) / "subnetworks").glob("L*.json")):
        d = json.loads(path.read_text())
        densities.append(f"| {d['layers']} | {100 * d['density']:.2f}% | {d['subtask_accuracy']:.3f} "
                         f"| {d['l0_lambda']:g} |")
    table2 = ("| layers | parameters in subnetwork (masked layers) | subtask accuracy | λ |\n"
              "|---|---|---|---|\n" + "\n".join(densities)) if densities else "(no subnetworks)"
    return (f"## Test accuracy (mean ± std over seeds and layer counts)\n\n{table}\n\n"
            f"## Subnetwork density (paper Table 2)\n\n{table2}\n")


def figure(records: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns, conditions, stats = accuracy_table(records)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for c in conditions:
        xs = [n for n in ns if (n, c) in stats]
        mean = [stats[(n, c)][0] for n in xs]
        std = [stats[(n, c)][1] for n in xs]
        plotted = [max(x, 1) for x in xs]  # N = 0 sits at 1 on the log axis
        ax.plot(plotted, mean, marker="o", label=c.replace("_", " "))
        ax.fill_between(plotted, [m - s for m, s in zip(mean, std)],
                        [m + s for m, s in zip(mean, std)], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("number of disambiguation samples")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return path


def report(out: Path) -> tuple[str, Path]:
    """Write report.md and accuracy.png into ``out``; return (markdown, figure path)."""
    out = Path(out)
    records = load_records(out)
    text = markdown(records, out)
    png = figure(records, out / "accuracy.png")
    atomic_write_text(out / "report.md", text + f"\n![test accuracy]({png.name})\n")
    return text, png
