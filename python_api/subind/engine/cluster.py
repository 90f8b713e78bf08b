"""Run a sweep's shards on a cluster with existing tools: a SLURM job-array
script (``sbatch`` it) or submitit jobs.  Each task is the same ``subind``
command with ``--shard i/k``; the grid is deterministic and every run and
stage is claimed by a lock, so the tasks share one results directory safely
and a re-submitted array only does what is missing."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

from .files import atomic_write_text


def slurm_array_script(argv: list[str], shards: int, out: Path,
                       sbatch_options: Optional[list[str]] = None) -> str:
    """The text of a job-array script running ``subind <argv>`` as ``shards``
    tasks; ``sbatch_options`` (e.g. ``--gres=gpu:1``) become #SBATCH lines."""
    if shards < 1:
        raise ValueError(f"--slurm needs a positive number of shards, got {shards}")
    logs = Path(out).resolve() / "logs"
    # sbatch reads a directive up to the first whitespace and a script line
    # up to its newline: a value with either would cut the directive short or
    # add a line of its own, so such values are refused rather than written.
    for what, value in (("the working directory", str(Path.cwd())), ("--out", str(logs))):
        if any(c.isspace() for c in value):
            raise ValueError(f"{what} {value!r} holds whitespace, which an #SBATCH line cannot "
                             "carry; use a path without spaces")
    lines = ["#!/bin/bash", f"#SBATCH --job-name=subind-{Path(out).name}",
             f"#SBATCH --array=0-{shards - 1}", f"#SBATCH --chdir={Path.cwd()}",
             f"#SBATCH --output={logs}/slurm-%A_%a.out"]
    for option in sbatch_options or []:
        if not option.startswith("--") or any(c.isspace() for c in option):
            raise ValueError(f"--sbatch options look like --name=value, one word without "
                             f"spaces or line breaks, got {option!r}")
        lines.append(f"#SBATCH {option}")
    command = [sys.executable, "-m", "subind", *argv, "--shard",
               f"$SLURM_ARRAY_TASK_ID/{shards}", "--no-progress"]
    quoted = " ".join(shlex.quote(c) if "$SLURM" not in c else f'"{c}"' for c in command)
    # The command's relative paths (--out, --config) are the working directory's: the
    # script changes to it itself too, so it also runs as `bash sweep.sbatch` elsewhere.
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(Path.cwd()))}",
              f"mkdir -p {shlex.quote(str(logs))}", f"exec {quoted}", ""]
    return "\n".join(lines)


def write_slurm_script(argv: list[str], shards: int, out: Path,
                       sbatch_options: Optional[list[str]] = None) -> Path:
    path = Path(out) / "slurm" / "sweep.sbatch"
    (Path(out) / "logs").mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, slurm_array_script(argv, shards, out, sbatch_options))
    path.chmod(0o755)
    return path


def submit_shards(argv: list[str], shards: int, out: Path, cluster: Optional[str] = None,
                  parameters: Optional[dict] = None, wait: bool = False) -> list:
    """Submit ``shards`` submitit jobs (``cluster``: None = auto-detect SLURM,
    'local' or 'debug'); with ``wait`` block until all finish."""
    try:
        import submitit
    except ImportError:
        raise ImportError("--submitit needs the optional `submitit` package "
                          "(pip install subind-fast[cluster])") from None
    if shards < 1:
        raise ValueError(f"--submitit needs a positive number of shards, got {shards}")
    executor = submitit.AutoExecutor(folder=str(Path(out) / "logs" / "submitit"),
                                     cluster=cluster)
    executor.update_parameters(name=f"subind-{Path(out).name}", **(parameters or {}))
    # Each job re-enters the command line in a process of its own, as a
    # SLURM array task would: the engine calls no command's code.
    jobs = [executor.submit(submitit.helpers.CommandFunction(
                [sys.executable, "-m", "subind", *argv, "--shard", f"{i}/{shards}",
                 "--no-progress"], verbose=False))
            for i in range(shards)]
    if wait:
        for job in jobs:
            job.result()
    return jobs


def parse_parameters(items: Optional[list[str]]) -> dict:
    """['timeout_min=60', 'gpus_per_node=1', 'slurm_partition=gpu'] → typed dict."""
    params = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--submitit-param must look like key=value, got {item!r}")
        for kind in (int, float):
            try:
                params[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            params[key] = value
    return params
