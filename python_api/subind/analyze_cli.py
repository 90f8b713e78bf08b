"""`subind analyze A.safetensors [B.safetensors …] --out DIR`: how
subnetworks of one model compare (subind_fast.analysis): per-parameter and
per-block density and overlap (IoU, intersection over minimum, shared
fractions), each mask's share of weights in the union of the others, P_reuse
and P_specialize for the first two, and seed stability (pairwise IoU) with
--stability.  One file gives its per-block density.  With --model, the same
per attention head (for models whose attention modules state their head
count), and with --eval-data the inverse-mask test.  Writes overlap.csv,
sharing.csv, heads.csv, summary.md and PNG plots.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path

import subind_fast as sf
from subind_fast import analysis as A

from .engine.cli import str_list
from .engine.files import atomic_write, atomic_write_text
from .engine.models import build_model

_BLOCK = re.compile(r"(?:^|\.)((?:h|blocks|layers?|stages)\.\d+)\.")


def block_of(name: str) -> str:
    """``transformer.h.3.mlp.c_fc.weight`` → ``h.3``; outside blocks: the name's first part."""
    match = _BLOCK.search(name)
    return match.group(1) if match else name.split(".")[0]


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="compare subnetworks (overlap, sharing, reuse)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subnetworks", nargs="+", type=Path, help="subnetwork files (1 or more)")
    p.add_argument("--labels", type=str_list, help="one label per file (default: file names)")
    p.add_argument("--stability", action="store_true",
                   help="the files are one subtask found with different seeds")
    p.add_argument("--out", type=Path, required=True)
    g = p.add_argument_group("the model (optional): per-head density and overlap; with "
                                 "--eval-data the inverse-mask test (the model scored with each "
                                 "subnetwork removed, and same-size random and complement "
                                 "removals as controls)")
    g.add_argument("--model", help="timm:NAME, hf:DIR or entry:MODULE:FUNCTION (as discover)")
    g.add_argument("--weights", help="the trained model's weights")
    g.add_argument("--hf-class", default="causal-lm")
    g.add_argument("--eval-data", action="append", metavar="SPEC",
                   help="data to score on (repeatable), e.g. 'experiment:arithmetic/a*b'")
    g.add_argument("--seed", type=int, default=0, help="seed of the control removals")
    p.set_defaults(handler=run)


def _load(args) -> dict[str, sf.Subnetwork]:
    labels = args.labels or [p.stem if p.stem != "subnetwork" else p.parent.name
                             for p in args.subnetworks]
    if len(labels) != len(args.subnetworks) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels must give {len(args.subnetworks)} distinct labels, got "
                         f"{labels}")
    return {label: sf.Subnetwork.load(path) for label, path in zip(labels, args.subnetworks)}


def _csv(header, rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    return buffer.getvalue()


def run(args, argv=None) -> int:
    masks = _load(args)
    labels = list(masks)
    if len(masks) == 1 and args.stability:
        raise ValueError("--stability needs the subnetworks of at least two seeds")
    first = masks[labels[0]]
    second = masks[labels[1]] if len(labels) > 1 else first  # one file: overlap with itself
    table = A.overlap(first, second)  # also checks that the files fit one model
    for label in labels[2:]:
        A.overlap(first, masks[label])
    args.out.mkdir(parents=True, exist_ok=True)
    pair = labels[:2]
    if len(pair) == 1:
        atomic_write_text(args.out / "density.csv", _csv(
            ["parameter", "size", "kept", "density"],
            [[name, row.size, row.a, f"{row.a / row.size:.6f}"] for name, row in table.items()]))
    else:
        rows = [[name, row.size, row.a, row.b, row.both, f"{row.iou:.6f}", f"{row.iom:.6f}",
                 f"{row.shared_a:.6f}", f"{row.shared_b:.6f}"] for name, row in table.items()]
        atomic_write_text(args.out / "overlap.csv", _csv(
            ["parameter", "size", labels[0], labels[1], "both", "iou", "iom",
             f"shared_{labels[0]}", f"shared_{labels[1]}"], rows))
        sharing = A.shared_with_others(masks)
        atomic_write_text(args.out / "sharing.csv", _csv(
            ["parameter", *labels], [[name, *(f"{sharing[l][name]:.6f}" for l in labels)]
                                     for name in [*first.names(), A.TOTAL]]))
    total = table[A.TOTAL]
    lines = [f"# {' vs '.join(labels)}", "",
             "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels),
             "| density | " + " | ".join(f"{m.density():.4f}" for m in masks.values()) + " |",
             *(["| shared with the others | " + " | ".join(
                 f"{sharing[l][A.TOTAL]:.4f}" for l in labels) + " |", "",
                f"{labels[0]} vs {labels[1]}: IoU {total.iou:.4f}, intersection over minimum "
                f"{total.iom:.4f}; P_reuse (same function) {A.p_reuse(first, second):.4f}, "
                f"P_specialize (different functions) {A.p_specialize(first, second):.4f}"]
               if len(labels) > 1 else []), "",
             *_group_table("block", _by_block(first, second), pair)]
    figures = []
    if args.model:
        model = build_model(args.model, args.weights, args.hf_class).eval()
        heads = A.head_overlap(first, second, A.attention_heads(model))
        if heads:
            rows = {f"{module}/{head}": _fractions(row) for (module, head), row in heads.items()}
            lines += ["", *_group_table("attention head", rows, pair)]
            atomic_write_text(args.out / "heads.csv", _csv(
                ["module", "head", *(f"density_{l}" for l in pair),
                 *(["iou", "iom"] if len(pair) > 1 else [])],
                [[module, head, *(f"{v:.6f}" for v in rows[f"{module}/{head}"][:len(pair)]),
                  *(f"{v:.6f}" for v in rows[f"{module}/{head}"][2:] if len(pair) > 1)]
                 for module, head in heads]))
            figures.append(_head_plot(heads, pair, args.out))
        if args.eval_data:
            lines += ["", *_inverse_mask_tables(args, model, masks)]
    elif args.eval_data:
        raise ValueError("--eval-data needs --model (the model to score)")
    if args.stability:
        result = A.stability(list(masks.values()))
        lines += ["", f"stability over {len(masks)} seeds: mean pairwise IoU "
                      f"{result['mean']:.4f}, min {result['min']:.4f}"]
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.out / "summary.md", text)
    figures = _plots(masks, args.out) + figures
    print(text)
    for path in figures:
        print(f"figure: {path}")
    return 0


def _fractions(row: A.Overlap) -> tuple[float, float, float, float]:
    return row.a / row.size, row.b / row.size, row.iou, row.iom


def _group_table(kind: str, groups: dict, labels: list) -> list[str]:
    """Markdown: density of each subnetwork per group, and IoU/IoM for two."""
    pair = len(labels) > 1
    header = [kind, *(f"density {l}" for l in labels), *(["IoU", "IoM"] if pair else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, (a, b, iou, iom) in groups.items():
        values = (a, b, iou, iom) if pair else (a,)
        lines.append(f"| {group} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return lines


def _inverse_mask_tables(args, model, masks: dict) -> list[str]:
    """Markdown rows: for each subnetwork and each removal, the accuracy on
    every --eval-data set."""
    from torch.utils.data import DataLoader

    from .discover_cli import data_for
    from .engine.data_sources import Classification

    sets = {}
    for spec in args.eval_data:
        data = data_for(spec, model)
        rows = data.eval or data.train
        sets[spec.rpartition("/")[2] or spec] = (data.task or Classification(),
                                                 DataLoader(rows, batch_size=512))
    header = ["subnetwork", "removed", *[f"accuracy on {name}" for name in sets]]
    lines = ["inverse-mask test (accuracy with the weights removed)", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, sub in masks.items():
        per_set = {name: A.inverse_mask_test(model, sub, lambda m, t=task, d=data:
                                             t.evaluate(m, d).accuracy, seed=args.seed)
                   for name, (task, data) in sets.items()}
        for removal in next(iter(per_set.values())):
            if removal == "intact" and label != next(iter(masks)):
                continue
            lines.append(f"| {label if removal != 'intact' else '–'} | {removal} | "
                         + " | ".join(f"{per_set[n][removal]:.4f}" for n in sets) + " |")
    return lines


def _by_block(a: sf.Subnetwork, b: sf.Subnetwork) -> dict:
    groups: dict[str, A.Overlap] = {}
    for name, row in A.overlap(a, b).items():
        if name == A.TOTAL:
            continue
        key = block_of(name)
        groups[key] = groups[key] + row if key in groups else row
    return {k: _fractions(r) for k, r in groups.items()}


def _head_plot(heads: dict, labels: list, out: Path) -> Path:
    """Heat maps, attention module × head: density of each subnetwork, and IoU for two."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    modules = list(dict.fromkeys(module for module, _ in heads))
    n_heads = 1 + max(head for _, head in heads)
    panels = [(f"density {l}", i) for i, l in enumerate(labels)]
    if len(labels) > 1:
        panels.append(("IoU", 2))
    fig, axes = plt.subplots(1, len(panels), squeeze=False,
                             figsize=(2.2 + 0.45 * n_heads * len(panels), 1.2 + 0.3 * len(modules)))
    for ax, (title, index) in zip(axes[0], panels):
        grid = np.full((len(modules), n_heads), np.nan)
        for (module, head), row in heads.items():
            grid[modules.index(module), head] = _fractions(row)[index]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        if grid.size <= 256:  # small models: the numbers themselves
            for (r, c), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if value < 0.6 else "black")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("head", fontsize=7)
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(len(modules)), modules if ax is axes[0][0] else [""] * len(modules),
                      fontsize=6)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.03)
    path = out / "heads.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png", bbox_inches="tight"))
    plt.close(fig)
    return path


def _plots(masks: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(masks)
    pair = labels[:2]
    blocks = _by_block(masks[pair[0]], masks[pair[-1]])
    names = list(blocks)
    series = [(f"density {label}", i) for i, label in enumerate(pair)]
    if len(pair) > 1:
        series.append(("IoU", 2))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 3.6))
    width = 0.8 / len(series)
    for k, (label, index) in enumerate(series):
        ax.bar([x + (k - (len(series) - 1) / 2) * width for x in range(len(names))],
               [blocks[n][index] for n in names], width, label=label)
    ax.set_xticks(list(range(len(names))), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(f"{' vs '.join(pair)} by block")
    fig.tight_layout()
    path = out / "blocks.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    if len(labels) == 1:
        return [path]
    sharing = A.shared_with_others(masks)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(labels, [sharing[l][A.TOTAL] for l in labels])
    ax.set_ylabel("share of its weights in the others' union")
    ax.set_ylim(0, 1)
    fig.tight_layout()
    path2 = out / "sharing.png"
    atomic_write(path2, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return [path, path2]
