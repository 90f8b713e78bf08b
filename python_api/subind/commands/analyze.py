"""`subind analyze A.safetensors [B.safetensors …] --out DIR`: how
subnetworks of one model compare (subind_fast.analysis): per-parameter and
per-block density and overlap (IoU, intersection over minimum, shared
fractions), each mask's share of weights in the union of the others, P_reuse
and P_specialize for the first two, and seed stability (pairwise IoU) with
--stability.  One file gives its per-block density.  With --model, the same
per attention head (for models whose attention modules state their head
count), with --eval-data the inverse-mask test, and with --specificity (one
--eval-data set per subnetwork, its own subtask) every subnetwork scored on
every subtask, alone and removed, with their pairwise overlap against chance
and a copy of each subnetwork carrying its specificity in its metadata
(engine/analysis_results.py).  Writes overlap.csv, sharing.csv, heads.csv,
specificity.csv/.json, summary.md and PNG plots; `subind report OUT` prints
the summary again.
"""
from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

import subind_fast as sf
from subind_fast import analysis as A

from ..engine import analysis_results as results
from ..engine import manifest
from ..engine.controls import controls_table
from ..engine import validation as check
from ..engine.options import MISSING, JsonObject, Repeated, Strs, flag
from ..engine.files import atomic_write, atomic_write_text
from ..engine.data_sources import evaluation_split, local_directory
from ..engine.models import HF_CLASSES, build_model, check_hf_class_applies
from ..engine.training import ScoresExamples

HELP = "compare subnetworks (overlap, sharing, reuse)"


@dataclass
class AnalyzeOptions:
    """The subnetworks to compare, and optionally the model they were found
    in: per-head density and overlap, and with --eval-data the inverse-mask
    test (the model scored with each subnetwork removed, and same-size random
    and complement removals as controls)."""
    subnetworks: Annotated[list[Path], tyro.conf.Positional,
                            tyro.conf.arg(metavar="SUBNETWORKS")] = MISSING
    """subnetwork files (1 or more)"""
    out: Path = MISSING
    """results directory"""
    labels: Optional[Strs] = None
    """one label per file (when left out: the file names)"""
    stability: bool = False
    """the files are one subtask found with different seeds"""
    specificity: bool = False
    """the files are subnetworks of different subtasks, one per --eval-data set in the same
    order (each file's own subtask): every subnetwork scored on every subtask, alone and
    removed, with a specificity score (needs --model)"""
    model: Optional[str] = None
    """timm:NAME, hf:DIR or entry:MODULE:FUNCTION (as for discover)"""
    weights: Optional[str] = None
    """the trained model's weights"""
    hf_class: Literal[tuple(sorted(HF_CLASSES))] = "causal-lm"
    """the transformers auto class of hf: models"""
    model_kwargs: JsonObject = field(default_factory=dict)
    """the model's keyword arguments as JSON, e.g. '{"num_classes": 16}'"""
    eval_data: Repeated = field(default_factory=list)
    """data to score on (repeatable), e.g. 'experiment:arithmetic/a*b'"""
    seed: int = 0
    """seed of the inverse-mask test's control removals and of the resampling behind the
    specificity intervals"""
    ablation: Literal["zero", "mean", "corrupted"] = "zero"
    """what removed weights see in the inverse-mask test: zero, their mean input over the
    evaluation set, or the input of another example of the batch (resample)"""


OPTIONS = {"analyze": AnalyzeOptions}


def _load(args) -> dict[str, sf.Subnetwork]:
    labels = args.labels or [p.stem if p.stem != "subnetwork" else p.parent.name
                             for p in args.subnetworks]
    if len(labels) != len(args.subnetworks) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels must give {len(args.subnetworks)} distinct labels, got "
                         f"{labels}")
    if args.specificity:  # each is saved again, with its specificity, under its label
        results.check_file_names(labels)
    return {label: sf.Subnetwork.load(path) for label, path in zip(labels, args.subnetworks)}


def _csv(header, rows) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    return buffer.getvalue()


def _check_options(args: AnalyzeOptions, given: set) -> None:
    """Options that need another one, named, before anything is loaded."""
    model_options = [flag(name) for name in ("weights", "hf_class", "model_kwargs", "eval_data")
                     if name in given]
    if model_options and not args.model:
        raise ValueError(f"{', '.join(model_options)} need{'s' if len(model_options) == 1 else ''}"
                         " --model (the model the subnetworks were found in)")
    for name, what in (("seed", "draws the inverse-mask test's controls and intervals"),
                       ("ablation", "chooses the inverse-mask test's removal")):
        if name in given and not args.eval_data:
            raise ValueError(f"{flag(name)} {what}: it needs --eval-data")
    check.non_negative_int("--seed", args.seed)
    if "hf_class" in given:
        check_hf_class_applies(args.model)
    if len(args.subnetworks) == 1 and args.stability:
        raise ValueError("--stability needs the subnetworks of at least two seeds")
    if args.specificity:
        if not args.model:
            raise ValueError("--specificity scores the subnetworks in their model: it needs "
                             "--model")
        if len(args.subnetworks) < 2 or len(args.eval_data) != len(args.subnetworks):
            raise ValueError(f"--specificity needs two or more subnetworks and one --eval-data "
                             f"set per subnetwork, its own subtask, in the same order; got "
                             f"{len(args.subnetworks)} subnetwork(s) and "
                             f"{len(args.eval_data)} --eval-data set(s)")


def _model_for(args, masks: dict):
    """--model with its weights, checked against every subnetwork (the same
    parameter names and shapes), so that heads and ablations read the right weights."""
    model = build_model(args.model, args.weights, args.hf_class, args.model_kwargs).eval()
    for label, sub in masks.items():
        try:
            sub.matching_parameters(model)
        except ValueError as err:
            raise ValueError(f"subnetwork {label} does not fit --model {args.model}: "
                             f"{str(err).removeprefix('subnetwork does not match the model: ')}"
                             ) from None
    return model


def run(parsed, argv=None) -> int:
    args = parsed.options
    _check_options(args, parsed.given)
    manifest.check_out(args.out)
    # Held from the start, so a second analysis on this folder is refused before it computes.
    with manifest.exclusive(args.out, "analyze"):
        return _analyze(args)


def _analyze(args) -> int:
    masks = _load(args)
    labels = list(masks)
    for label, sub in masks.items():
        if sub.density() == 0:
            warnings.warn(f"subnetwork {label} is empty: its overlaps and removals say nothing",
                          stacklevel=2)
    first = masks[labels[0]]
    second = masks[labels[1]] if len(labels) > 1 else first  # one file: overlap with itself
    table = A.overlap(first, second)  # also checks that the files fit one model
    for label in labels[2:]:
        A.overlap(first, masks[label])
    pair = labels[:2]
    # Everything is computed before the first file is written: a failure
    # (a model that does not fit, data that cannot be read) leaves --out as it was.
    outputs: dict[str, str] = {}
    if len(pair) == 1:
        outputs["density.csv"] = _csv(
            ["parameter", "size", "kept", "density"],
            [[name, row.size, row.a, f"{row.a / row.size:.6f}"] for name, row in table.items()])
    else:
        rows = [[name, row.size, row.a, row.b, row.both, f"{row.iou:.6f}", f"{row.iom:.6f}",
                 f"{row.shared_a:.6f}", f"{row.shared_b:.6f}"] for name, row in table.items()]
        outputs["overlap.csv"] = _csv(
            ["parameter", "size", labels[0], labels[1], "both", "iou", "iom",
             f"shared_{labels[0]}", f"shared_{labels[1]}"], rows)
        sharing = A.shared_with_others(masks)
        outputs["sharing.csv"] = _csv(
            ["parameter", *labels], [[name, *(f"{sharing[l][name]:.6f}" for l in labels)]
                                     for name in [*first.names(), A.TOTAL]])
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
    for label, sub in masks.items():  # the faithfulness controls their discovery recorded
        if "subtask_accuracy" in sub.metadata:
            lines += ["", f"{label} (accuracy {sub.metadata['subtask_accuracy']:.4f} when found):",
                      *controls_table(sub.metadata["subtask_accuracy"], sub.density(),
                                      sub.metadata.get("controls"),
                                      sub.metadata.get("controls_not_run"))]
    heads, specific = {}, None
    if args.model:
        model = _model_for(args, masks)
        heads = A.head_overlap(first, second, A.attention_heads(model))
        if heads:
            rows = {f"{module}/{head}": _fractions(row) for (module, head), row in heads.items()}
            lines += ["", *_group_table("attention head", rows, pair)]
            outputs["heads.csv"] = _csv(
                ["module", "head", *(f"density_{l}" for l in pair),
                 *(["iou", "iom"] if len(pair) > 1 else [])],
                [[module, head, *(f"{v:.6f}" for v in rows[f"{module}/{head}"][:len(pair)]),
                  *(f"{v:.6f}" for v in rows[f"{module}/{head}"][2:] if len(pair) > 1)]
                 for module, head in heads])
        if args.eval_data:
            lines += ["", *_inverse_mask_tables(args, model, masks)]
        if args.specificity:
            subtasks = dict(zip(labels, (_set_name(spec) for spec in args.eval_data)))
            specific = found = A.specificity(model, masks, _evaluators(args, model), subtasks)
            overlaps, intervals = results.pairwise_overlaps(masks), found.intervals(
                seed=args.seed)
            lines += ["", *results.specificity_lines(found, intervals), "",
                      *results.overlap_lines(overlaps)]
            outputs["specificity.csv"] = results.specificity_csv(found)
            specificity_record = results.specificity_record(
                found, intervals, overlaps, {subtasks[label]: spec
                                  for label, spec in zip(labels, args.eval_data)}, args.model)
    if args.stability:
        result = A.stability(masks)
        lines += ["", f"stability over {len(masks)} seeds: mean pairwise IoU "
                      f"{result.mean_iou:.4f}, min {min(result.iou()):.4f}"]
    text = "\n".join(lines) + "\n"
    identity = {"subnetworks": {label: str(path.resolve()) for label, path
                                in zip(labels, args.subnetworks)},
                **{name: getattr(args, name) for name in ("stability", "specificity", "model",
                                                          "weights",
                                                          "hf_class", "model_kwargs",
                                                          "eval_data", "seed", "ablation")},
                "content": manifest.content_of(
                    skip=args.out, weights=args.weights if args.model else None,
                    model=local_directory(args.model),
                    **{f"subnetwork {label}": path for label, path
                       in zip(labels, args.subnetworks)})}
    manifest.claim(args.out, results.EXPERIMENT, identity,
                   hint="an analysis folder holds one comparison: use another --out")
    for name, content in outputs.items():
        atomic_write_text(args.out / name, content)
    if specific:
        results.write_specificity(args.out, specificity_record, masks)
    figures = (_plots(masks, args.out) + ([_head_plot(heads, pair, args.out)] if heads else [])
               + ([results.specificity_plot(specific, args.out)] if specific else []))
    # last: summary.md is what `subind report` reads, so it marks a finished analysis
    atomic_write_text(args.out / results.SUMMARY, text)
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


#: the inverse-mask test's largest batch
EVAL_BATCH = 512


def even_batches(n: int, at_most: int) -> list[list[int]]:
    """Indices 0..n-1 in consecutive batches of at most ``at_most`` whose sizes
    differ by at most one: never a last batch of one sample, which a
    corrupted (resample) ablation could not pair within its batch."""
    count = -(-n // at_most)
    if count == 0:
        return []
    bounds = [round(k * n / count) for k in range(count + 1)]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def _set_name(spec: str) -> str:
    return spec.rpartition("/")[2] or spec


def _eval_sets(args, model) -> dict:
    """{set name: (task, batches)} of every --eval-data set."""
    from torch.utils.data import DataLoader

    from ..experiments import data_for
    from ..engine.classification import Classification

    sets = {}
    for spec in args.eval_data:
        data = data_for(spec, model)
        rows = evaluation_split(data, spec, "--eval-data")
        sets[_set_name(spec)] = (data.task or Classification(),
                                 DataLoader(rows, batch_sampler=even_batches(len(rows),
                                                                             EVAL_BATCH)))
    return sets


def _evaluators(args, model) -> dict:
    """{set name: evaluate(model)}: each example's correctness where the task
    tells it (ScoresExamples: intervals over the examples), else the accuracy."""
    return {name: ((lambda m, t=task, d=data: t.correct(m, d))
                   if isinstance(task, ScoresExamples) else
                   (lambda m, t=task, d=data: t.evaluate(m, d).accuracy))
            for name, (task, data) in _eval_sets(args, model).items()}


def _inverse_mask_tables(args, model, masks: dict) -> list[str]:
    """Markdown rows: for each subnetwork and each removal, the accuracy on
    every --eval-data set."""
    sets = _eval_sets(args, model)
    header = ["subnetwork", "removed", *[f"accuracy on {name}" for name in sets]]
    removal = {"zero": "zeroed", "mean": "ablated to their mean input",
               "corrupted": "ablated to another example's input (resample)"}[args.ablation]
    lines = [f"inverse-mask test (accuracy with the weights removed: {removal})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    seed = args.seed
    notes = []
    for label, sub in masks.items():
        per_set = {name: A.inverse_mask_test(model, sub, lambda m, t=task, d=data:
                                             t.evaluate(m, d).accuracy, seed=seed,
                                             ablation=args.ablation, reference=data,
                                             forward=task.loss)
                   for name, (task, data) in sets.items()}
        found_under = sub.metadata.get("ablation", "zero")
        if found_under != args.ablation:
            notes.append(f"{label} was found with its removed weights {found_under}-ablated; "
                         f"this test removes them under --ablation {args.ablation}"
                         + (f" (--ablation {found_under} tests it as it was found)"
                            if found_under in ("zero", "mean", "corrupted") else
                            " (a learned ablation's inputs are not in the subnetwork file)"))
        short = sub.complement_shortfall()
        if short:
            notes.append(f"{label}: the complement control is not size-matched (not applicable) "
                         f"in {len(short)} of {len(sub.names())} parameters, where the "
                         "subnetwork keeps more than half; there it removes the whole "
                         "complement: " + ", ".join(
                             f"{name} (keeps {kept}, {outside} outside)"
                             for name, (kept, outside) in list(short.items())[:6])
                         + (" …" if len(short) > 6 else ""))
        for removal in next(iter(per_set.values())):
            if removal == "intact" and label != next(iter(masks)):
                continue
            marked = f"{removal} *" if removal == "without complement" and short else removal
            lines.append(f"| {label if removal != 'intact' else '–'} | {marked} | "
                         + " | ".join(f"{per_set[n][removal]:.4f}" for n in sets) + " |")
    return lines + ([""] + [f"\\* {note}" for note in notes] if notes else [])


def _by_block(a: sf.Subnetwork, b: sf.Subnetwork) -> dict:
    return {k: _fractions(r) for k, r in A.overlap_by_group(a, b).items()}


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
