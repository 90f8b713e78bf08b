"""What `subind analyze` writes, read back by `subind report`: an analysis
folder's summary and figures, and the specificity part of
`subind analyze --specificity`, written and read in one place.

Is each subnetwork its own subtask's?  For subnetworks found for different
subtasks of one model (subind_fast.analysis.specificity): every subnetwork
scored on every subtask alone and removed, the score and removal score, and
the overlap between them against the chance level of random masks of the same
sizes.

OUT/summary.md                      the analysis (what `subind report OUT` prints)
OUT/specificity.json                everything below, per subnetwork
OUT/specificity.csv                 per subnetwork and subtask: intact, alone, removed
OUT/specificity.png                 the matrix of accuracy alone
OUT/subnetworks/<label>.safetensors each input subnetwork with its specificity in its
                                    metadata (the inputs themselves are not changed)
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Mapping, Optional

import subind_fast as sf
from subind_fast import analysis as A

from .files import atomic_write, atomic_write_json

EXPERIMENT = "analyze"
SPECIFICITY = "specificity.json"
SUMMARY = "summary.md"


def pairwise_overlaps(masks: Mapping[str, sf.Subnetwork]) -> dict[tuple[str, str], dict]:
    """{(a, b): {iou, iom, chance_iou}} for every pair of ``masks``."""
    labels = list(masks)
    found = {}
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            total = A.overlap(masks[a], masks[b])[A.TOTAL]
            found[(a, b)] = {"iou": total.iou, "iom": total.iom,
                             "chance_iou": A.chance_overlap(masks[a], masks[b]).iou}
    return found


def overlap_lines(overlaps: Mapping[tuple[str, str], dict]) -> list[str]:
    """The pairwise overlap table of summary.md."""
    return ["overlap between the subnetworks (chance: random masks with the same number of "
            "weights in every parameter)", "",
            "| a | b | IoU | IoM | chance IoU |", "|---|---|---|---|---|",
            *(f"| {a} | {b} | {row['iou']:.4f} | {row['iom']:.4f} | {row['chance_iou']:.4f} |"
              for (a, b), row in overlaps.items())]


def specificity_record(found: A.Specificity, intervals: Optional[dict],
                       overlaps: Mapping[tuple[str, str], dict], eval_data: Mapping[str, str],
                       model: str) -> dict:
    """What specificity.json holds: per subnetwork its own subtask, its
    accuracy alone and removed on every subtask, its scores (with their 95 %
    intervals over the evaluation examples, or null) and its overlap with
    each other subnetwork; the intact model's accuracy; where each subtask's
    data came from and how many examples it has."""
    def overlaps_of(label):
        return {(b if a == label else a): row for (a, b), row in overlaps.items()
                if label in (a, b)}

    def interval(label, name):
        if not intervals:
            return None
        found_interval = intervals[label][name]
        return [found_interval.low, found_interval.high]

    examples = (None if found.examples is None else
                {t: found.examples[("intact", None, t)].numel() for t in found.intact})
    return {"model": model, "eval_data": dict(eval_data), "examples": examples,
            "intact": found.intact, "interval": "95 % percentile bootstrap over the evaluation "
                                                "examples, 2000 draws" if intervals else None,
            "subnetworks": {label: {"own_subtask": own, "score": found.score[label],
                                    "score_ci": interval(label, "score"),
                                    "removal_score": found.removal_score[label],
                                    "removal_score_ci": interval(label, "removal_score"),
                                    "alone": found.alone[label],
                                    "removed": found.removed[label],
                                    "overlap_with": overlaps_of(label)}
                            for label, own in found.own.items()}}


def file_name(label: str) -> str:
    """A file name for ``label`` ("a*b" → "a_b"): letters, digits, . + - and _."""
    return re.sub(r"[^A-Za-z0-9.+_-]+", "_", label).strip("._") or "subnetwork"


def check_file_names(labels) -> None:
    """Two labels that would share a file name are an error naming both."""
    seen = {}
    for label in labels:
        name = file_name(label)
        if name in seen:
            raise ValueError(f"--labels {seen[name]!r} and {label!r} would both be saved as "
                             f"subnetworks/{name}.safetensors; choose labels that differ in "
                             "letters or digits")
        seen[name] = label


def write_specificity(out: Path, record: dict, masks: Mapping[str, sf.Subnetwork]) -> None:
    """specificity.json, and each subnetwork's copy with its own part of the
    record (and the intact model's accuracy) in its metadata."""
    out = Path(out)
    for label, sub in masks.items():
        sub.metadata["specificity"] = {**record["subnetworks"][label], "label": label,
                                       "intact": record["intact"], "model": record["model"],
                                       "eval_data": record["eval_data"]}
        sub.save(out / "subnetworks" / f"{file_name(label)}.safetensors")
    atomic_write_json(out / SPECIFICITY, record)


def _with_interval(value: float, interval: Optional[A.Interval]) -> str:
    return f"{value:+.4f}" + ("" if interval is None else
                              f" [{interval.low:+.3f}, {interval.high:+.3f}]")


def specificity_lines(found: A.Specificity, intervals: Optional[dict]) -> list[str]:
    """The specificity table of summary.md (``intervals``: found.intervals())."""
    tasks = list(found.intact)
    sizes = ("" if found.examples is None else " (examples: " + ", ".join(
        f"{t} {found.examples[('intact', None, t)].numel()}" for t in tasks) + ")")
    lines = ["specificity: accuracy on each subtask of the model with only the subnetwork's "
             "weights (alone) and with them zeroed (removed); score = own subtask minus the "
             "mean of the others (alone), removal score = the drop on its own subtask minus "
             "the mean drop on the others"
             + (", with 95 % percentile bootstrap intervals over the evaluation examples"
                + sizes if intervals else " (no intervals: the tasks gave accuracies only)"), "",
             "| subnetwork | own subtask | " + " | ".join(f"alone on {t}" for t in tasks)
             + " | " + " | ".join(f"removed, on {t}" for t in tasks)
             + " | score | removal score |",
             "|" + "---|" * (4 + 2 * len(tasks)),
             "| (intact model) | – | " + " | ".join(f"{found.intact[t]:.4f}" for t in tasks)
             + " | " + " | ".join("–" for _ in tasks) + " | – | – |"]
    for label, task in found.own.items():
        mine = (intervals or {}).get(label, {})
        lines.append(f"| {label} | {task} | "
                     + " | ".join(f"{found.alone[label][t]:.4f}" for t in tasks) + " | "
                     + " | ".join(f"{found.removed[label][t]:.4f}" for t in tasks)
                     + f" | {_with_interval(found.score[label], mine.get('score'))} | "
                     + f"{_with_interval(found.removal_score[label], mine.get('removal_score'))} |")
    return lines


def specificity_csv(found: A.Specificity) -> str:
    """One row per subnetwork and subtask (the intact model's rows first), and
    per subnetwork a "(score)" row holding its score and removal score."""
    rows = [["(intact)", "", task, f"{acc:.6f}", "", ""] for task, acc in found.intact.items()]
    for label, own in found.own.items():
        rows += [[label, own, task, f"{found.intact[task]:.6f}",
                  f"{found.alone[label][task]:.6f}", f"{found.removed[label][task]:.6f}"]
                 for task in found.intact]
        rows.append([label, own, "(score)", "", f"{found.score[label]:.6f}",
                     f"{found.removal_score[label]:.6f}"])
    buffer = io.StringIO()
    csv.writer(buffer).writerows(
        [["subnetwork", "own_subtask", "subtask", "intact", "alone", "removed"], *rows])
    return buffer.getvalue()


def specificity_plot(found: A.Specificity, out: Path) -> Path:
    """The matrix of accuracy alone: subnetworks (rows) × subtasks (columns),
    each row's own subtask outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    labels, tasks = list(found.own), list(found.intact)
    grid = [[found.alone[label][task] for task in tasks] for label in labels]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(tasks), 1.2 + 0.6 * len(labels)))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
    for i, label in enumerate(labels):
        for j, task in enumerate(tasks):
            ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if grid[i][j] < 0.6 else "black")
        j = tasks.index(found.own[label])
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=1.5))
    ax.set_xticks(range(len(tasks)), [f"{t}\n(intact {found.intact[t]:.2f})" for t in tasks],
                  fontsize=7, rotation=30 if max(map(len, tasks)) > 8 else 0, ha="right"
                  if max(map(len, tasks)) > 8 else "center")
    ax.set_yticks(range(len(labels)), [f"{l} ({found.score[l]:+.2f})" for l in labels],
                  fontsize=7)
    ax.set_title("accuracy with only the subnetwork (score)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = out / "specificity.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def report(out: Path) -> tuple[str, list[Path]]:
    """`subind report` of an analysis folder: its summary.md and figures."""
    out = Path(out)
    path = out / SUMMARY
    if not path.is_file():
        raise FileNotFoundError(f"{out}: no {SUMMARY} (the analysis did not finish; rerun "
                                "`subind analyze`)")
    return path.read_text(), sorted(out.glob("*.png"))


def specificity_of(subnetwork_file: Path) -> dict:
    """The specificity a subnetwork file carries (empty when it has none)."""
    return sf.Subnetwork.load(subnetwork_file).metadata.get("specificity", {})
