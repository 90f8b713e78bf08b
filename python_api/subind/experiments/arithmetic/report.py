"""`subind report DIR` for the arithmetic experiment: test accuracy by number
of disambiguation samples and condition (mean ± std over seeds and layer
counts) as markdown and as a PNG in the style of the paper's Figure 3, its
statistics (95 % CIs, paired differences with sign tests, data efficiency;
also statistics.json and statistics.csv), a Table-2-style table of
subnetwork densities, and with --discovery-seeds the discoveries' seed
stability."""
from __future__ import annotations

import json
from pathlib import Path

from ...engine import records as run_records
from ...engine import report as R
from ...engine import statistics as S
from ...engine.discovery_seeds import received_line, stability_sections, stage_records
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


def markdown(records: list[dict], out: Path, stats: dict) -> str:
    ns, conditions, cells = accuracy_table(records)
    table = R.markdown(["N disambiguation", *conditions],
                       [[n, *[R.cell(cells.get((n, c))) for c in conditions]] for n in ns])
    densities = []
    for stage in stage_records(Path(out) / "subnetworks"):
        d = json.loads(stage.path.read_text())
        densities.append([d["layers"], "–" if stage.seed is None else stage.seed,
                          f"{100 * d['density']:.2f}%", f"{d['subtask_accuracy']:.3f}",
                          R.found_by(stage.path)])
    table2 = (R.markdown(["layers", "discovery seed", "parameters in subnetwork (masked layers)",
                          "subtask accuracy", "chosen by"], densities)
              if densities else "(no subnetworks)")
    stat_lines = "\n".join(S.markdown_lines(stats["test_accuracy"], "test accuracy"))
    stability, _ = stability_sections(Path(out) / "subnetworks")
    if stability:
        stability += [received_line(records), ""]
    return (f"## Test accuracy (mean ± std over seeds and layer counts)\n\n{table}\n\n"
            f"## Statistics (each seed and layer count one unit; paired by them)\n\n"
            f"{stat_lines}\n\n"
            f"## Subnetwork density (paper Table 2)\n\n{table2}\n\n"
            + (f"## Seed stability of the discovery (--discovery-seeds)\n\n"
               + "\n".join(stability) + "\n" if stability else "")
            + "\n".join(claims(stats["test_accuracy"], out)) + "\n")


#: the paper's numbers the CPU presets can test (§4, Fig. 3, Table 2)
PAPER = {"si_at_1000": 1.0, "scratch_at_1000": 0.506, "random_data_ratio": 6.0,
         "density_2_layers": 0.0768}


def claims(stats: dict, out: Path) -> list[str]:
    """Markdown: each claim of the paper this run can test, the paper's
    number, ours with its 95 % CI, and a verdict by the rule written beside it."""
    points = {(r["n_disambiguation"], r["condition"]): S.Estimate.of(r)
              for r in stats["points"]}
    pairs = {(r["n_disambiguation"], r["condition"]): r for r in stats["paired"]}
    rows = []
    si = points.get((1000, "subtask_induction"))
    if si is not None:
        rows.append(["subtask induction is near-perfect at N = 1,000 (0.1 % of pairs)",
                     "≈ 1.0 (Fig. 3)", si.cell(),
                     "reproduced (the CI lies at or above 0.99)" if si.low >= 0.99 else
                     "partly (the CI reaches 0.99)" if si.high >= 0.99 else
                     "not reproduced (the CI stays below 0.99)"])
    scratch = points.get((1000, "scratch"))
    if scratch is not None:
        close = scratch.low - 0.05 <= PAPER["scratch_at_1000"] <= scratch.high + 0.05
        rows.append(["scratch averages 50.6 % at N = 1,000", "0.506", scratch.cell(),
                     "reproduced (0.506 within 0.05 of the CI)" if close else
                     "not reproduced (0.506 more than 0.05 outside the CI)"])
    versus = pairs.get((1000, "random"))
    if versus is not None:
        d = S.Estimate.of(versus)
        rows.append(["subtask induction beats the same-size random subnetwork at N = 1,000 "
                     "(paired by seed)", "yes (Fig. 3)",
                     f"{d.cell()}; {versus['wins']}/{versus['losses']}/{versus['ties']} "
                     f"wins/losses/ties, sign p {versus['sign_test_p']:.3g}",
                     "reproduced (CI above 0)" if d.low > 0 else
                     "not reproduced (CI includes 0 or lies below)" if d.high >= 0 else
                     "contradicted (CI below 0)"])
    for row in stats["efficiency"]:
        ratio = row["ratios"].get("random")
        if row["threshold"] != 0.99 or ratio is None:
            continue
        r = S.Ratio(**ratio)
        if r.ratio is None:
            verdict = "not testable on this grid (a curve does not reach 0.99)"
        elif r.low is not None and r.low > 1:
            verdict = ("reproduced (CI above 1, 6 inside)" if r.low <= 6 <= r.high else
                       "direction reproduced (CI above 1), size not (6 outside the CI)")
        else:
            verdict = "not reproduced (CI reaches 1)"
        rows.append(["a random subnetwork needs ~6× the data to reach perfect accuracy (N at "
                     "0.99, random / subtask induction)", "≈ 6×", r.cell(), verdict])
    two_layers = [stage for stage in stage_records(Path(out) / "subnetworks")
                  if stage.name == "L2"]
    if len(two_layers) == 1:
        stage = two_layers[0].path
        d = json.loads(stage.read_text())
        rows.append(["Table 2: the 2-layer subnetwork keeps 7.68 % of the masked weights",
                     "7.68 %", f"{100 * d['density']:.2f} % (one discovery; {R.found_by(stage)}, "
                     f"subtask accuracy {d['subtask_accuracy']:.3f})",
                     "different model width and number range: compared, not tested"])
    elif two_layers:
        density = S.mean_ci([100 * json.loads(stage.path.read_text())["density"]
                             for stage in two_layers])
        rows.append(["Table 2: the 2-layer subnetwork keeps 7.68 % of the masked weights",
                     "7.68 %", f"{density.mean:.2f} % [{density.low:.2f}, {density.high:.2f}] "
                     f"over {len(two_layers)} discovery seeds",
                     "different model width and number range: compared, not tested"])
    if not rows:
        return []
    return ["## What the paper claims, and what we measured", "",
            R.markdown(["claim (paper §4)", "paper", "ours [95 % CI]", "verdict (rule)"], rows)]


def statistics(records: list[dict]) -> dict:
    """engine/statistics.py's comparison of the conditions' test accuracy, a
    (layer count, seed) pair being one unit."""
    return S.compare_conditions(records, lambda r: r["test_accuracy"],
                                unit=lambda r: (r["layers"], r["seed"]))


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
    stats = {"test_accuracy": statistics(records)}
    text = markdown(records, out, stats)
    S.write_tables(out, stats)
    png = figure(records, out / "accuracy.png")
    _, heatmaps = stability_sections(out / "subnetworks")
    atomic_write_text(out / "report.md", text + f"\n![test accuracy]({png.name})\n" + "".join(
        f"![{path.parent.name} IoU]({path.relative_to(out)})\n" for path in heatmaps))
    return text, [png, *heatmaps]
