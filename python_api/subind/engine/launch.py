"""Run the shards of a sweep on this machine: ``k`` processes of the same
command, each with ``--shard i/k`` and an equal share of the CPU cores (or one
GPU each where there are GPUs).  The grid is deterministic and every run and
stage is claimed by a lock, so the processes share one results directory
safely; this launcher only starts them, waits, and says how each ended."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def shard_environment(index: int, jobs: int, device: str) -> dict:
    """Environment of shard ``index``: its share of the cores, and its own GPU
    when the sweep runs on CUDA and there are enough GPUs."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(max(1, available_cores() // jobs))
    if device.startswith("cuda") and torch.cuda.device_count() >= jobs:
        env["CUDA_VISIBLE_DEVICES"] = str(index)
    return env


def run_local_shards(subcommand_argv: list[str], jobs: int, log_dir: Path, device: str) -> int:
    """Start ``jobs`` shard processes of ``subind <subcommand_argv>`` and wait
    for all; return 0 when every shard succeeded."""
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"running {jobs} shards in parallel, {max(1, available_cores() // jobs)} CPU thread(s) "
          f"each; logs in {log_dir}", flush=True)
    procs = []
    for i in range(jobs):
        log = open(log_dir / f"shard-{i}-of-{jobs}.log", "w")
        command = [sys.executable, "-m", "subind", *subcommand_argv, "--shard", f"{i}/{jobs}",
                   "--no-progress"]
        procs.append((i, log, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                               env=shard_environment(i, jobs, device))))
    failed = 0
    for i, log, proc in procs:
        code = proc.wait()
        log.close()
        lines = (log_dir / f"shard-{i}-of-{jobs}.log").read_text().strip().splitlines()
        last = lines[-1] if lines else "(no output)"
        print(f"shard {i}/{jobs}: {'ok' if code == 0 else f'failed (exit {code})'}: {last}",
              flush=True)
        failed += code != 0
    return 1 if failed else 0
