"""The one benchmark harness.

* timing: warm-up, then N timed repeats, reported as p20/p50/p80 in ms; on the
  CPU with a fixed thread count, on a GPU with ``triton.testing.do_bench``;
* memory: bytes saved for backward beyond the inputs and parameters
  (``saved_tensors_hooks``), and peak allocated memory on a GPU;
* output: a table printed per bench and rows appended to a CSV with a fixed
  schema (timestamp, git sha, device, versions, bench, shape, dtype, config,
  provider, mode, metric, p20, p50, p80); rows written before the dtype and
  config columns existed are carried over with those cells empty.
  ``benchmarks/report.py`` turns the CSV into the README's tables.
"""
from __future__ import annotations

import argparse
import csv
import math
import datetime as _dt
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from subind_fast.atomic import atomic_write

CSV_COLUMNS = ["timestamp", "git_sha", "device", "torch", "triton", "bench", "shape", "dtype",
               "config", "provider", "mode", "metric", "p20", "p50", "p80"]
DEFAULT_CSV = Path(__file__).parent / "results" / "results.csv"


@dataclass
class Stats:
    p20: float
    p50: float
    p80: float

    @classmethod
    def of(cls, samples: list[float]) -> "Stats":
        ordered = sorted(samples)

        def q(frac):
            return ordered[min(len(ordered) - 1, int(round(frac * (len(ordered) - 1))))]

        return cls(q(0.2), q(0.5), q(0.8))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})"


def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def time_cpu(fn: Callable[[], object], setup: Optional[Callable[[], object]] = None,
             min_repeats: int = 5, max_repeats: int = 50, budget_s: float = 1.0,
             warmup: int = 2) -> Stats:
    """Time ``fn`` alone (``setup`` runs before each call, untimed)."""
    for _ in range(warmup):
        if setup:
            setup()
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_repeats and (len(samples) < min_repeats
                                          or time.perf_counter() - start < budget_s):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Stats.of(samples)


def time_round_robin(cases: dict[str, tuple[Callable[[], object], Optional[Callable[[], object]]]],
                     min_repeats: int = 7, max_repeats: int = 60, budget_s: float = 2.0,
                     warmup: int = 2) -> dict[str, Stats]:
    """Time several providers on the CPU in alternation (one call of each per
    round), so drift in machine speed hits them all alike.  ``cases`` maps a
    name to (fn, setup); setup runs untimed before each call."""
    for fn, setup in cases.values():
        for _ in range(warmup):
            if setup:
                setup()
            fn()
    samples: dict[str, list[float]] = {name: [] for name in cases}
    start = time.perf_counter()
    rounds = 0
    while rounds < max_repeats and (rounds < min_repeats or time.perf_counter() - start < budget_s):
        for name, (fn, setup) in cases.items():
            if setup:
                setup()
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {name: Stats.of(values) for name, values in samples.items()}


def time_gpu(fn: Callable[[], object], setup: Optional[Callable[[], object]] = None) -> Stats:
    from triton.testing import do_bench

    def run():
        if setup:
            setup()
        fn()

    p20, p50, p80 = do_bench(run, quantiles=[0.2, 0.5, 0.8], warmup=25, rep=100)
    return Stats(p20, p50, p80)


@dataclass
class Row:
    bench: str
    shape: str
    provider: str
    mode: str
    metric: str
    stats: Stats
    dtype: str = ""
    config: str = ""


@dataclass
class Recorder:
    """Rows of one bench; ``dtype`` and ``config`` (e.g. "batch=8 threads=2")
    describe the run and fill those columns of every row."""
    bench: str
    device: torch.device
    rows: list[Row] = field(default_factory=list)
    dtype: str = ""
    config: str = ""

    def add(self, shape: str, provider: str, mode: str, metric: str, stats: Stats,
            config: str = "") -> None:
        self.rows.append(Row(self.bench, shape, provider, mode, metric, stats, self.dtype,
                             " ".join(x for x in (self.config, config) if x)))

    def csv_rows(self) -> list[list[str]]:
        try:
            import triton
            triton_version = triton.__version__
        except ImportError:
            triton_version = ""
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        sha, dev = git_sha(), device_name(self.device)
        return [[stamp, sha, dev, torch.__version__, triton_version, r.bench, r.shape, r.dtype,
                 r.config, r.provider, r.mode, r.metric, f"{r.stats.p20:.6g}",
                 f"{r.stats.p50:.6g}", f"{r.stats.p80:.6g}"] for r in self.rows]


def read_csv(path: Path = DEFAULT_CSV) -> list[dict]:
    """Every row of the results CSV as a dict over CSV_COLUMNS (older rows
    without dtype/config get empty cells)."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [{c: row.get(c) or "" for c in CSV_COLUMNS} for row in csv.DictReader(handle)]


def append_csv(recorder: Recorder, path: Path = DEFAULT_CSV) -> Path:
    """Append the recorder's rows to ``path`` atomically (temp file + rename)."""
    old = read_csv(path)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            writer.writerows([row[c] for c in CSV_COLUMNS] for row in old)
            writer.writerows(recorder.csv_rows())

    atomic_write(path, write)
    return path


def available_cores() -> int:
    """CPU cores this process may run on (the machine's, unless pinned)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _thread_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2, got {text!r}")
    return counts


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds > 0, got {text!r}")
    return value


def select_cases(cases: list, wanted: Optional[str]) -> list:
    """The cases whose names contain one of the comma-separated ``wanted``
    substrings (all cases when None); a substring that names none is an error."""
    if not wanted:
        return cases
    words = [w.strip() for w in wanted.split(",") if w.strip()]
    unmatched = [w for w in words if not any(w in c.name for c in cases)]
    if unmatched or not words:
        raise SystemExit(f"--cases {wanted!r}: {unmatched or wanted!r} name(s) no case; the "
                         f"cases are {[c.name for c in cases]}")
    return [c for c in cases if any(w in c.name for w in words)]


def add_common_args(parser, budget_s: float) -> None:
    """--device/--threads/--budget/--csv, shared by every bench."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=_thread_counts, default=[available_cores()],
                        help=f"CPU thread counts, comma-separated; the whole bench runs at each "
                             f"(default: all {available_cores()} cores)")
    parser.add_argument("--budget", type=_seconds, default=budget_s,
                        help="seconds of round-robin CPU timing per measurement")
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)


def device_from_args(parser, args) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    return device


def run_at_thread_counts(device: torch.device, args, run: Callable[[], None]) -> None:
    """``run()`` once per requested CPU thread count (once on a GPU).  The
    device name in every table and CSV row states the count."""
    for threads in (args.threads if device.type == "cpu" else [torch.get_num_threads()]):
        torch.set_num_threads(threads)
        run()


def run_config(device: torch.device) -> str:
    """The configuration column's common part: the thread count on the CPU."""
    return f"threads={torch.get_num_threads()}" if device.type == "cpu" else "gpu"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *[line(r) for r in rows]])
