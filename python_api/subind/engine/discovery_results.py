"""What `subind discover` leaves in its results directory, written and read
in one place: the subnetwork, its per-parameter densities (density.csv), the
λ candidates (candidates.csv) and the summary (summary.json), and the report
`subind report` prints from them."""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import subind_fast as sf

from . import seed_stability
from .controls import controls_table
from .files import atomic_write_json, atomic_write_text

#: the name a discovery directory's manifest gives its writer
EXPERIMENT = "discover"


def _density_table(sub) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["parameter", "shape", "kept", "total", "density"])
    for name, (kept, total) in sub.counts().items():
        writer.writerow([name, "x".join(map(str, sub.shape(name))), kept, total,
                         f"{kept / total:.6f}" if total else "0"])
    return buffer.getvalue()


def write_results(out: Path, cfg, result, ranks, notes, started: float,
                  compiled: bool, controls: dict, not_run: dict) -> None:
    if controls or not_run:  # with the file, so that analyze shows them wherever it goes
        result.subnetwork.metadata["controls"] = controls
        if not_run:
            result.subnetwork.metadata["controls_not_run"] = not_run
    seconds = time.time() - started
    result.subnetwork.save(out / "subnetwork.safetensors")
    atomic_write_text(out / "density.csv", _density_table(result.subnetwork))
    atomic_write_text(out / "candidates.csv", "l0_lambda,accuracy,density\n" + "".join(
        f"{lam:g},{acc:.6f},{dens:.6f}\n" for lam, acc, dens in result.candidates))
    atomic_write_json(out / "summary.json", {
        "l0_lambda": result.l0_lambda, "accuracy": result.accuracy,
        "density": result.density, "ranks": ranks.world, "seconds": round(seconds, 1),
        "activation_checkpointing": notes[0] if notes else None,
        **{key: result.subnetwork.metadata[key] for key in (
            "target_density", "expected_density", "density_before_cut", "lagrange_multipliers")
           if key in result.subnetwork.metadata},
        "kernels": sf.kernels(), "compiled": compiled,
        **({"controls": controls} if controls else {}),
        **({"controls_not_run": not_run} if not_run else {})})
    print(f"subnetwork: λ={result.l0_lambda:g}, accuracy {result.accuracy:.4f}, density "
          f"{result.density:.4f} ({ranks.world} rank(s), {seconds:.0f} s) → "
          f"{out / 'subnetwork.safetensors'}")


def report(out: Path) -> tuple[str, list]:
    """`subind report OUT` for a discovery directory: the λ candidates and the
    per-parameter density table; for a run over several seeds (--seeds), the
    seed stability and then each seed's report."""
    out = Path(out)
    seeds = sorted(out.glob("seed-*"), key=lambda p: int(p.name.split("-", 1)[1])
                   if p.name.split("-", 1)[1].isdigit() else -1)
    if seeds:
        stability = seed_stability.report(out)
        if not stability:
            raise FileNotFoundError(f"{out}: no {seed_stability.STABILITY}: the run over seeds "
                                    "was interrupted; rerun its command to resume it")
        parts = [f"# discovery over seeds in {out}", "", *stability]
        for folder in seeds:
            parts += ["", report(folder)[0].replace("# discovery in", "## discovery in", 1)]
        return "\n".join(parts), []
    if not (out / "summary.json").is_file():
        started = "checkpoint" in {p.name for p in out.iterdir()} or any(out.glob("lambda-*"))
        raise FileNotFoundError(
            f"{out}: no summary.json: " + ("the discovery was interrupted; rerun its command to "
                                           "resume it" if started else
                                           "the discovery stopped before its first epoch "
                                           "ended (see its error); rerun its command"))
    summary = json.loads((out / "summary.json").read_text())
    aimed = summary.get("target_density")
    chosen = (f"aimed at density {aimed:g} (Lagrangian; density "
              f"{summary['density_before_cut']:.4f} before the exact cut)" if aimed is not None
              else f"chosen λ = {summary['l0_lambda']:g}")
    lines = [f"# discovery in {out}", "",
             f"{chosen}: accuracy {summary['accuracy']:.4f}, density "
             f"{summary['density']:.4f} ({summary['ranks']} rank(s), {summary['seconds']} s)"]
    if aimed is None:
        lines += ["", "| λ | accuracy | density |", "|---|---|---|"]
        with open(out / "candidates.csv", newline="") as f:
            lines += [f"| {r['l0_lambda']} | {r['accuracy']} | {r['density']} |"
                      for r in csv.DictReader(f)]
    lines += ["", *controls_table(summary["accuracy"], summary["density"],
                                  summary.get("controls"), summary.get("controls_not_run"))]
    lines += ["", "| parameter | shape | kept | total | density |", "|---|---|---|---|---|"]
    with open(out / "density.csv", newline="") as f:
        lines += [f"| {r['parameter']} | {r['shape']} | {r['kept']} | {r['total']} | "
                  f"{r['density']} |" for r in csv.DictReader(f)]
    return "\n".join(lines), []
