"""`subind report DIR` for the arithmetic experiment: test accuracy by number
of disambiguation samples and condition (mean ± std over seeds and layer
counts) as markdown and as a PNG in the style of the paper's Figure 3, and a
Table-2-style table of subnetwork densities."""
from __future__ import annotations

import json
from pathlib import Path

from ...engine import records as run_records
from ...engine import report as R
from ...engine.files import atomic_write_text
from .experiment import RECORD_FIELDS


def load_records(out: Path) -> list[dict]:
    runs = Path(out) / "runs"
    if not runs.is_dir():
        raise FileNotFoundError(f"{out}: no runs/ directory (run `subind arithmetic --out {out}` first)")
    found = run_records.load_all(runs, RECORD_FIELDS)  # a malformed record names its file
    if not found:
        raise FileNotFoundError(f"{out}: no finished runs yet")
    return found


def accuracy_table(records: list[dict]) -> tuple[list[int], list[str], dict]:
    stats = R.group(records, lambda r: (r["n_disambiguation"], r["condition"]),
                    lambda r: r["test_accuracy"])
    return sorted({n for n, _ in stats}), sorted({c for _, c in stats}), stats


def markdown(records: list[dict], out: Path) -> str:
    ns, conditions, stats = accuracy_table(records)
    table = R.markdown(["N disambiguation", *conditions],
                       [[n, *[R.cell(stats.get((n, c))) for c in conditions]] for n in ns])
    densities = []
    for path in sorted((Path(out) / "subnetworks").glob("L*.json")):
        d = json.loads(path.read_text())
        densities.append([d["layers"], f"{100 * d['density']:.2f}%",
                          f"{d['subtask_accuracy']:.3f}", f"{d['l0_lambda']:g}"])
    table2 = (R.markdown(["layers", "parameters in subnetwork (masked layers)", "subtask accuracy",
                          "λ"], densities) if densities else "(no subnetworks)")
    return (f"## Test accuracy (mean ± std over seeds and layer counts)\n\n{table}\n\n"
            f"## Subnetwork density (paper Table 2)\n\n{table2}\n")


def figure(records: list[dict], path: Path) -> Path:
    plt = R.pyplot()
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
    return R.save_figure(fig, path)


def report(out: Path) -> tuple[str, list[Path]]:
    """Write report.md and accuracy.png into ``out``; return (markdown, figure paths)."""
    out = Path(out)
    records = load_records(out)
    text = markdown(records, out)
    png = figure(records, out / "accuracy.png")
    atomic_write_text(out / "report.md", text + f"\n![test accuracy]({png.name})\n")
    return text, [png]
