"""The README's benchmark tables and plot, regenerated from
benchmarks/results/results.csv (no hand-pasted numbers).

For each bench, the machine of its newest run, and each of that machine's
devices (the device names the thread count), the latest run is tabulated
(rows from other machines stay in the CSV: the tables describe one machine); the tables replace the text between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` in README.md, and the model-step plot is written to
benchmarks/results/model_step.png.

    python -m benchmarks.report            # rewrite README.md in place (atomically)
    python -m benchmarks.report --check    # exit 1 if README.md is out of date
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from subind_fast.atomic import atomic_write

from . import harness

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PLOT = Path(__file__).parent / "results" / "model_step.png"
LAYER_PROVIDERS = ("eager", "neurosurgeon", "compile", "ours")
MODEL_PROVIDERS = ("plain", "eager", "neurosurgeon", "compile", "ours", "ours+compile")


def _machine(device: str) -> str:
    return device.split(" (")[0]


def latest_runs(rows: list[dict], bench: str) -> dict[str, list[dict]]:
    """{device: rows of the latest run of ``bench`` on it}, for the devices of
    the machine that ran ``bench`` last."""
    bench_rows = [r for r in rows if r["bench"] == bench]
    if not bench_rows:
        return {}
    machine = _machine(max(bench_rows, key=lambda r: r["timestamp"])["device"])
    by_device = defaultdict(list)
    for row in bench_rows:
        if _machine(row["device"]) == machine:
            by_device[row["device"]].append(row)
    out = {}
    for device, device_rows in sorted(by_device.items()):
        stamp = max(r["timestamp"] for r in device_rows)
        out[device] = [r for r in device_rows if r["timestamp"] == stamp]
    return out


def _value(rows, shape, provider, mode, metric):
    for r in rows:
        if (r["shape"], r["provider"], r["mode"], r["metric"]) == (shape, provider, mode, metric):
            return float(r["p50"])
    return None


def _shapes(rows) -> list[str]:
    seen = []
    for r in rows:
        if r["shape"] not in seen:
            seen.append(r["shape"])
    return seen


def _header(device, rows) -> str:
    first = rows[0]
    extra = ", ".join(x for x in (first["dtype"], f"torch {first['torch']}",
                                  f"run {first['timestamp'][:16]}Z, {first['git_sha']}") if x)
    return f"**{device}** ({extra})\n\n"


def _table(header, body) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def layers_table(rows: list[dict]) -> str:
    out = []
    for device, run in latest_runs(rows, "masked_layers").items():
        body = []
        for shape in _shapes(run):
            floor = _value(run, shape, "plain", "full", "ms")
            cells = [shape, f"{floor:.4g}"]
            for p in LAYER_PROVIDERS:
                ms = _value(run, shape, p, "full", "ms")
                cells.append("–" if ms is None else
                             (f"**{ms / floor:.3f}**" if p == "ours" else f"{ms / floor:.3f}"))
            saved = [_value(run, shape, p, "full", "saved_bytes_per_weight")
                     for p in LAYER_PROVIDERS]
            cells.append(" · ".join("–" if s is None else f"{s:.0f}" for s in saved))
            body.append(cells)
        out.append(_header(device, run) + _table(
            ["shape", "plain fwd+bwd ms", *[f"{p} ×plain" for p in LAYER_PROVIDERS],
             "saved B/weight " + " · ".join(LAYER_PROVIDERS)], body))
    return "\n".join(out)


def optim_table(rows: list[dict]) -> str:
    out = []
    for device, run in latest_runs(rows, "optim").items():
        providers = sorted({r["provider"] for r in run}, key=lambda p: (p != "ours", p))
        body = []
        for shape in _shapes(run):
            ours = _value(run, shape, "ours", "step", "ms")
            cells = [shape]
            for p in providers:
                ms = _value(run, shape, p, "step", "ms")
                cells.append("–" if ms is None else (f"**{ms:.3g} ms**" if p == "ours"
                                                     else f"{ms:.3g} ms ({ms / ours:.1f}×)"))
            body.append(cells)
        out.append(_header(device, run) + _table(["parameters", *providers], body))
    return "\n".join(out)


def model_step_table(rows: list[dict]) -> str:
    out = []
    for device, run in latest_runs(rows, "model_step").items():
        memory_metric = "peak_mib" if any(r["metric"] == "peak_mib" for r in run) else "saved_mib"
        body = []
        for shape in _shapes(run):
            ours = _value(run, shape, "ours", "step", "ms")
            cells = [shape]
            for p in MODEL_PROVIDERS:
                ms = _value(run, shape, p, "step", "ms")
                mib = _value(run, shape, p, "step", memory_metric)
                if ms is None:
                    cells.append("n/a")
                else:
                    text = f"{ms:.4g} ms · {mib:.0f} MiB"
                    cells.append(f"**{text}**" if p == "ours" else f"{text} ({ms / ours:.2f}×)")
            body.append(cells)
        what = "peak allocated" if memory_metric == "peak_mib" else "saved for backward"
        out.append(_header(device, run) + _table(
            ["model", *MODEL_PROVIDERS], body) + f"\n(time per step · memory {what}; "
                                                 f"(×) = time relative to ours)\n")
    return "\n".join(out)


def model_step_paired_table(rows: list[dict]) -> str:
    """One table per pair (ours/plain, ours+compile/compile, …), one row per
    model, one column per thread count (device): each pair's latest run there,
    its ratio's median [p20, p80] and the number of pairs."""
    paired = [r for r in rows if r["bench"] == "model_step_paired"]
    out = []
    for pair in sorted({r["provider"] for r in paired}, reverse=True):
        runs = latest_runs([r for r in paired if r["provider"] == pair], "model_step_paired")
        shapes = _shapes([r for run in runs.values() for r in run])
        body = []
        for shape in shapes:
            cells = [shape]
            for run in runs.values():
                row = next((r for r in run if r["shape"] == shape), None)
                count = row["config"].split("pairs=")[-1] if row else ""
                cells.append(f"{float(row['p50']):.3f} [{float(row['p20']):.3f}, "
                             f"{float(row['p80']):.3f}] ({count} pairs)" if row else "n/a")
            body.append(cells)
        first = next(iter(runs.values()))[0]
        out.append(f"**{pair}**, paired ({first['dtype']}, torch {first['torch']}, run "
                   f"{first['timestamp'][:16]}Z, {first['git_sha']})\n\n"
                   + _table(["model", *runs], body))
    return "\n".join(out)


def plot(rows: list[dict], path: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = latest_runs(rows, "model_step")
    if not runs:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 3.6), squeeze=False)
    for ax, (device, run) in zip(axes[0], runs.items()):
        shapes = _shapes(run)
        width = 0.8 / len(MODEL_PROVIDERS)
        for i, p in enumerate(MODEL_PROVIDERS):
            ratios = []
            for shape in shapes:
                ms, ours = _value(run, shape, p, "step", "ms"), _value(run, shape, "ours",
                                                                       "step", "ms")
                ratios.append(ms / ours if ms else 0.0)
            ax.bar([k + i * width for k in range(len(shapes))], ratios, width, label=p)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(shapes))],
                      [s.split(" (")[0] for s in shapes])
        ax.set_ylabel("step time / ours")
        ax.set_title(device, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SECTIONS = {"layers": layers_table, "optim": optim_table, "model-step": model_step_table,
            "model-step-paired": model_step_paired_table}


def render(text: str, rows: list[dict]) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"README.md has no <!-- bench:{name} --> … <!-- /bench:{name} --> "
                             "markers")
        table = make(rows)
        if table:  # a bench with no rows here keeps its table (the CSV stays on the machine that ran it)
            text = pattern.sub(lambda m: m.group(1) + table + m.group(2), text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=harness.DEFAULT_CSV)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    rows = harness.read_csv(args.csv)
    old = README.read_text()
    new = render(old, rows)
    if args.check:
        print("README.md is up to date" if new == old else "README.md tables are out of date")
        return int(new != old)
    atomic_write(README, lambda tmp: tmp.write_text(new))
    plot(rows)
    print(f"rewrote {README} and {PLOT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
