"""Accuracy through transfer training across several `subind vision` results
directories (e.g. one per architecture and reinit policy): the table of pooled
accuracy by epochs trained on stdout and one row of curves per directory and
architecture in a PNG.

    python -m benchmarks.transfer_curves "reinit masked=runs/masked" \\
        "reinit all=runs/all" --conditions subtask_induction,scratch,random \\
        --png benchmarks/results/vision_transfer_curves.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

from subind.experiments.vision.report import (by_arch, curves, epoch_series, load_records,
                                               pooled_through_transfer)


def _labelled(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"expected LABEL=DIR, got {text!r}")
    return label, Path(folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=_labelled, nargs="+", metavar="LABEL=DIR")
    parser.add_argument("--conditions", default="",
                        help="comma-separated conditions to draw (default: every trained one)")
    parser.add_argument("--png", type=Path)
    args = parser.parse_args(argv)
    wanted = {c for c in args.conditions.split(",") if c}
    panels = {}
    for label, folder in args.runs:
        try:
            records = [r for r in load_records(folder)
                       if not wanted or r["condition"] in wanted]
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise SystemExit(f"{folder}: not a finished `subind vision` directory ({err})") \
                from None
        if not records:
            raise SystemExit(f"{folder}: no finished runs of {sorted(wanted)}")
        for arch, series in by_arch(
                epoch_series(folder, records)).items():
            panels[f"{arch}, {label}"] = series
            print(f"### {arch}, {label}\n\n{pooled_through_transfer(series, records)}\n")
    if args.png:
        print(f"figure: {curves(panels, args.png)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
