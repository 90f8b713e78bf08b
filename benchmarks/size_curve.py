"""The accuracy–size curve of several `subind discover` results directories
(e.g. one per --target-density, or one per λ): a markdown table on stdout and
a PNG.

    python -m benchmarks.size_curve runs/t02 runs/t05 runs/t10 runs/t20 \\
        --png benchmarks/results/arithmetic_target_density.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from subind_fast.atomic import atomic_write


def _summary(folder: Path) -> dict:
    path = folder / "summary.json"
    if not path.is_file():
        raise SystemExit(f"{folder}: no summary.json (not a finished `subind discover` run)")
    return json.loads(path.read_text())


def _before_cut(folder: Path) -> tuple[float, float]:
    """(hard density, evaluation accuracy) of the last epoch, before the cut."""
    import csv

    with open(folder / "discovery-lambda0.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return float(last["density"]), float(last["eval_accuracy"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--png", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for folder in args.runs:
        s = _summary(folder)
        aim = (f"target {s['target_density']:.2%}" if "target_density" in s
               else f"λ = {s['l0_lambda']:g}")
        before = _before_cut(folder) if "target_density" in s else None
        rows.append((aim, s["density"], before, s["accuracy"], s["seconds"], folder.name))
    print("| run | aimed at | before the cut: density, accuracy | kept | accuracy | time |")
    print("|---|---|---|---|---|---|")
    for aim, density, before, accuracy, seconds, name in rows:
        cut = "–" if before is None else f"{before[0]:.4f}, {before[1]:.3f}"
        print(f"| {name} | {aim} | {cut} | {density:.4f} | {accuracy:.3f} | {seconds:.0f} s |")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.8, 3.2))
        for marker, subset in (("o", [r for r in rows if r[0].startswith("target")]),
                               ("x", [r for r in rows if r[0].startswith("λ")])):
            if subset:
                ax.plot([100 * r[1] for r in subset], [r[3] for r in subset], marker,
                        linestyle="-" if marker == "o" else "none",
                        label="--target-density" if marker == "o" else "--lambdas")
        ax.set_xlabel("kept weights (%)")
        ax.set_ylabel("subtask accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_write(args.png, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        print(f"figure: {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
