"""`subind report DIR` for the vision experiment: a Table-1-style table
(original, pooled and cue-conflict results per condition, mean ± std over
seeds), Figure-5-style training curves, the per-category shape-bias plot and
the discovered subnetworks' per-layer densities."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from ...engine import records as run_records
from ...engine import report as R
from ...engine import statistics as S
from ...engine.discovery_seeds import received_line, stability_sections, stage_records
from ...engine.files import atomic_write_text
from .config import CONDITIONS, RECORD_FIELDS
from ...shape_bias.evaluation import plot_per_category

COLUMNS = [  # (header, value of a record)
    ("original", lambda r: r["original_accuracy"]),
    ("pooled", lambda r: r["pooled_accuracy"]),
    ("cue-conflict accuracy", lambda r: r["cue_conflict"]["accuracy"]),
    ("robustness", lambda r: r["cue_conflict"]["robustness"]),
    ("shape bias", lambda r: r["cue_conflict"]["shape_bias"]),
]


def load_records(out: Path) -> list[dict]:
    runs = Path(out) / "runs"
    if not runs.is_dir():
        raise FileNotFoundError(f"{out}: no runs/ directory (run `subind vision --out {out}` "
                                f"first)")
    found = run_records.load_all(runs, RECORD_FIELDS)
    if not found:
        raise FileNotFoundError(f"{out}: no finished runs yet")
    return found


def _order(condition: str) -> int:
    return list(CONDITIONS).index(condition)


def table(records: list[dict]) -> str:
    keys = sorted({(r["arch"], r["n_disambiguation"], r["condition"]) for r in records},
                  key=lambda k: (k[0], k[1], _order(k[2])))
    rows = []
    for arch, n, condition in keys:
        mine = [r for r in records if (r["arch"], r["n_disambiguation"], r["condition"])
                == (arch, n, condition)]
        cells = [R.cell(R.mean_std([f(r) for r in mine]) + (len(mine),), count=False)
                 for _, f in COLUMNS]
        rows.append([arch, n, condition.replace("_", " "), mine[0].get("train_set_size", ""),
                     *cells, len(mine)])
    return R.markdown(["model", "N", "condition", "train set", *[h for h, _ in COLUMNS],
                       "seeds"], rows)


def densities(out: Path) -> tuple[str, dict]:
    rows, layers = [], {}
    for stage in stage_records(Path(out) / "subnetworks"):
        d = json.loads(stage.path.read_text())
        label = (d["arch"] + ("" if d["source"] == "adapted" else " (random init)")
                 + ("" if stage.seed is None else f", discovery seed {stage.seed}"))
        rows.append([label, f"{100 * d['density']:.2f}%", f"{d['pooled_accuracy']:.3f}",
                     R.found_by(stage.path)])
        layers[label] = d["layer_density"]
    text = (R.markdown(["subnetwork of", "weights kept (masked layers)", "pooled accuracy",
                        "chosen by"], rows) if rows else "(no subnetworks)")
    return text, layers


def epoch_series(out: Path, records: list[dict]) -> dict:
    """(arch, condition) → epochs trained → [(original, pooled) evaluation
    accuracy of each seed], from the runs' per-epoch logs (epochs trained 0:
    at transfer, before any training)."""
    series = defaultdict(lambda: defaultdict(list))
    for r in records:
        log = Path(out) / "runs" / r["condition"] / (
            f"{r['arch']}-N{r['n_disambiguation']}-s{r['seed']}.csv")
        if not log.is_file():
            continue  # conditions that do not train have no curve
        with open(log) as f:
            for row in csv.DictReader(f):
                trained = (int(row["epochs_trained"]) if "epochs_trained" in row
                           else int(row["epoch"]) + 1)  # older logs: no row before training
                series[(r["arch"], r["condition"])][trained].append(
                    (float(row["eval_accuracy"]), float(row["pooled_accuracy"])))
    return series


def _mean(values) -> float:
    return sum(values) / len(values)


def curves(panels: dict, path: Path):
    """Mean evaluation accuracy by epochs trained (Figure 5): one row of panels
    per key of ``panels`` (a title → an :func:`epoch_series`)."""
    if not any(panels.values()):
        return None
    plt = R.pyplot()
    fig, axes = plt.subplots(len(panels), 2, figsize=(9, 3.4 * len(panels)), squeeze=False)
    for row, (title, series) in enumerate(panels.items()):
        for (_, condition), by_epoch in sorted(series.items(), key=lambda kv: _order(kv[0][1])):
            epochs = sorted(by_epoch)
            for col in (0, 1):
                axes[row][col].plot(epochs, [_mean([v[col] for v in by_epoch[e]])
                                             for e in epochs],
                                    marker=".", label=condition.replace("_", " "))
        for col, name in enumerate(("original images", "mean-pooled images")):
            ax = axes[row][col]
            ax.set_title(f"{title}: {name}", fontsize=10)
            ax.set_xlabel("epochs trained (0: at transfer)")
            ax.set_ylabel("evaluation accuracy")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[row][1].legend(fontsize=8)
    fig.tight_layout()
    return R.save_figure(fig, path)


def by_arch(series: dict) -> dict:
    """An :func:`epoch_series` split into one panel per architecture."""
    panels = defaultdict(dict)
    for (arch, condition), by_epoch in series.items():
        panels[arch][(arch, condition)] = by_epoch
    return dict(sorted(panels.items()))


_AT_TRANSFER = {  # column → where a run record keeps it
    "frozen weights alone": lambda r: r.get("frozen_weights_alone_pooled_accuracy"),
    "frozen alone, pooled BN stats":
        lambda r: (r.get("pooled_bn_stats") or {}).get("frozen_weights_alone"),
    "0, pooled BN stats": lambda r: (r.get("pooled_bn_stats") or {}).get("at_transfer"),
}


def pooled_through_transfer(series: dict, records: list[dict]) -> str:
    """Mean pooled accuracy of the frozen weights alone (the rest zeroed), with
    BatchNorm statistics re-estimated on pooled images where the model has them,
    and of the model at transfer (0 epochs), after the first epochs, at its
    highest and at the end, per (arch, condition): where the transferred
    subnetwork's pooled-image ability goes."""
    at_transfer = {column: defaultdict(list) for column in _AT_TRANSFER}
    for r in records:
        for column, read in _AT_TRANSFER.items():
            if read(r) is not None:
                at_transfer[column][(r["arch"], r["condition"])].append(read(r))
    columns = [c for c in _AT_TRANSFER if c == "frozen weights alone" or at_transfer[c]]
    rows = []
    for key, by_epoch in sorted(series.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))):
        pooled = {e: _mean([v[1] for v in values]) for e, values in by_epoch.items()}
        last = max(pooled)
        peak = max(pooled, key=pooled.get)
        cells = [f"{pooled[e]:.3f}" if e in pooled else "–" for e in (0, 1, 2, 5)]
        fixed = [f"{_mean(at_transfer[c][key]):.3f}" if at_transfer[c][key] else "–"
                 for c in columns]
        rows.append([key[0], key[1].replace("_", " "), *fixed, *cells,
                     f"{pooled[peak]:.3f} ({peak})", f"{pooled[last]:.3f} ({last})"])
    return R.markdown(["model", "condition", *columns, "0 (at transfer)", "1",
                       "2", "5", "highest (epoch)", "end (epoch)"], rows) if rows else ""


def shape_bias_figure(records: list[dict], path: Path):
    """Per-category shape bias of each (arch, condition), averaged over seeds."""
    groups = defaultdict(list)
    for r in records:
        groups[(r["arch"], r["condition"])].append(r["cue_conflict"])
    categories = list(records[0]["cue_conflict"]["per_category"])
    results = {}
    for (arch, condition), summaries in sorted(groups.items(),
                                               key=lambda kv: (kv[0][0], _order(kv[0][1]))):
        per_category = {c: {"shape_bias": _nanmean([s["per_category"][c]["shape_bias"]
                                                    for s in summaries])} for c in categories}
        results[f"{arch} {condition.replace('_', ' ')}"] = {
            "per_category": per_category,
            "shape_bias": _nanmean([s["shape_bias"] for s in summaries])}
    return plot_per_category(results, categories, path, title="cue-conflict shape bias")


def density_figure(layers: dict, path: Path):
    if not layers:
        return None
    plt = R.pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for label, per_layer in layers.items():
        names = list(per_layer)
        ax.plot(range(len(names)), [per_layer[n] for n in names], marker="o", label=label)
    longest = max(layers.values(), key=len)
    ax.set_xticks(range(len(longest)), [n.removesuffix(".weight") for n in longest],
                  rotation=90, fontsize=6)
    ax.set_ylabel("fraction of weights kept")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return R.save_figure(fig, path)


def _nanmean(values):
    kept = [v for v in values if v is not None and v == v]  # null: NaN as JSON writes it
    return sum(kept) / len(kept) if kept else float("nan")


def stage_summary(out: Path) -> str:
    rows = []
    for stage in ("base", "adapted"):
        for path in sorted((Path(out) / stage).glob("*/model.json")):
            d = json.loads(path.read_text())
            acc = d.get("two_cue_accuracy", d.get("original_accuracy"))
            rows.append([stage, d["arch"], f"{acc:.3f}",
                         f"{d['pooled_accuracy']:.3f}" if "pooled_accuracy" in d else "–",
                         f"{d['seconds']:.0f}"])
    return R.markdown(["stage", "model", "accuracy (base: shape & texture heads)",
                       "pooled accuracy", "seconds"], rows) if rows else ""


#: the metrics whose statistics the report gives (record field → how the tables name it)
STATISTICS = {"shape_bias": ("shape bias", lambda r: r["cue_conflict"]["shape_bias"]),
              "cue_conflict_accuracy": ("cue-conflict accuracy",
                                        lambda r: r["cue_conflict"]["accuracy"]),
              "original_accuracy": ("original accuracy", lambda r: r["original_accuracy"]),
              "pooled_accuracy": ("pooled accuracy", lambda r: r["pooled_accuracy"])}


def statistics(records: list[dict]) -> dict:
    """engine/statistics.py's comparison of the conditions for each of
    STATISTICS, per architecture, paired by seed (data efficiency on the
    accuracies only, where the grid has several N)."""
    return {name: S.compare_conditions(
                records, read, panel=lambda r: r["arch"],
                thresholds=S.THRESHOLDS if name.endswith("accuracy") else ())
            for name, (_, read) in STATISTICS.items()}


#: the paper's directional claims (§5, Table 1) this run can test: (metric, other
#: condition, the claim); each holds when subtask induction minus the other, paired by
#: seed, has its 95 % CI above 0
CLAIMS = (("pooled_accuracy", "scratch", "higher accuracy on mean-pooled images than scratch"),
          ("original_accuracy", "scratch", "higher accuracy on the original images than "
                                           "scratch (data efficiency)"),
          ("cue_conflict_accuracy", "scratch", "more cue-conflict images classified by shape "
                                               "than scratch"),
          ("shape_bias", "random", "a larger shape bias than the same-size random subnetwork"),
          ("shape_bias", "scratch", "a larger shape bias than scratch"))


def claims(stats: dict) -> list[str]:
    """Markdown: each claim of CLAIMS per architecture and N, ours with its
    CI and sign test, and the verdict by the rule in CLAIMS' comment."""
    rows = []
    for metric, other, claim in CLAIMS:
        for row in stats[metric]["paired"]:
            if row["condition"] != other:
                continue
            d = S.Estimate.of(row)
            verdict = ("reproduced (CI above 0)" if d.low > 0 else
                       "contradicted (CI below 0)" if d.high < 0 else
                       "not reproduced (CI includes 0)")
            rows.append([f"{row['panel']}, N={row['n_disambiguation']}",
                         f"subtask induction has {claim}", d.cell(),
                         f"{row['wins']}/{row['losses']}/{row['ties']}",
                         f"{row['sign_test_p']:.3g}", verdict])
    if not rows:
        return []
    return ["## What the paper claims, and what we measured", "",
            "Directional claims of the paper's §5 (Table 1), on this run's synthetic shape/"
            "texture data; the paper's own numbers are for 16-class ImageNet and are not "
            "comparable.", "",
            R.markdown(["model", "claim", "subtask induction minus the other [95 % CI]",
                        "wins/losses/ties", "sign p", "verdict"], rows)]


def markdown(records: list[dict], out: Path, stats: dict) -> str:
    dens, _ = densities(out)
    stability, _ = stability_sections(Path(out) / "subnetworks")
    if stability:
        stability += [received_line(records), ""]
    through = pooled_through_transfer(epoch_series(out, records), records)
    stat_lines = [line for name, (what, _) in STATISTICS.items()
                  for line in [*S.markdown_lines(stats[name], what), ""]]
    return (f"## Subtask Induction on images (paper Table 1; mean ± std over seeds)\n\n"
            f"{table(records)}\n\n"
            f"Cue-conflict accuracy = images classified by shape; robustness = 1 − images "
            f"classified by the misleading texture; shape bias = shape / (shape + texture) "
            f"decisions (Geirhos); same-class images excluded.\n\n"
            f"## Statistics (paired by seed)\n\n" + "\n".join(stat_lines) + "\n"
            + "\n".join(claims(stats)) + "\n\n"
            f"## Pooled accuracy through transfer training (mean over seeds; epochs "
            f"trained)\n\n{through}\n\n"
            f"## Stages\n\n{stage_summary(out)}\n\n"
            f"## Discovered subnetworks\n\n{dens}\n"
            + ("\n## Seed stability of the discovery (--discovery-seeds)\n\n"
               + "\n".join(stability) + "\n" if stability else ""))


def report(out: Path) -> tuple[str, list[Path]]:
    out = Path(out)
    records = load_records(out)
    stats = statistics(records)
    text = markdown(records, out, stats)
    S.write_tables(out, stats)
    figures = [curves(by_arch(epoch_series(out, records)), out / "curves.png"),
               shape_bias_figure(records, out / "shape-bias.png"),
               density_figure(densities(out)[1], out / "densities.png"),
               *stability_sections(out / "subnetworks")[1]]
    figures = [f for f in figures if f is not None]
    atomic_write_text(out / "report.md", text + "\n" + "\n".join(
        f"![{f.stem}]({f.relative_to(out)})" for f in figures) + "\n")
    return text, figures
