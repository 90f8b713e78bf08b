"""What every sweep command shares: where its results go and how its grid
runs — this process, one shard of it (``--shard i/k``), k local shard
processes (``--jobs``), a SLURM job array (``--slurm``) or submitit jobs
(``--submitit``).  Launched shards re-enter through ``python -m subind``
with the same options and ``--shard i/k``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

from ..engine.options import MISSING, Parsed, Repeated
from ..engine.sweep import parse_shard


@dataclass
class SweepLaunch:
    """Where the sweep's results go and how its grid runs."""
    out: Path = MISSING
    """results directory (resumable; refuses a different configuration)"""
    shard: Optional[str] = None
    """i/k: run every k-th run of the grid starting at i, then any run no other process has
    claimed"""
    jobs: int = 1
    """run the grid as this many shard processes on this machine"""
    progress: bool = True
    """progress bars"""
    slurm: Optional[int] = None
    """write OUT/slurm/sweep.sbatch, a SLURM job array of this many tasks, instead of running"""
    sbatch: Repeated = field(default_factory=list)
    """an #SBATCH line for --slurm (repeatable), e.g. --sbatch=--gres=gpu:1"""
    submitit: Optional[int] = None
    """submit this many shard jobs with submitit (SLURM when available)"""
    submitit_param: Repeated = field(default_factory=list)
    """a submitit executor parameter KEY=VALUE (repeatable), e.g. timeout_min=240"""
    submitit_cluster: Optional[Literal["slurm", "local", "debug"]] = None
    """the submitit backend (when left out: auto-detect)"""


def without_option(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (``--flag v`` or ``--flag=v``)."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == flag:
            skip = True
        elif not item.startswith(flag + "="):
            out.append(item)
    return out


def run_sweep(parsed: Parsed, argv: list[str], make_experiment: Callable[[], object]) -> int:
    """Build the experiment (checks every option and claims the results
    directory, once), then run this process's shard or launch the shards.
    ``argv``: the whole command line (command name first), for the shards."""
    launch: SweepLaunch = parsed.launch
    shard = parse_shard(launch.shard)
    if launch.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {launch.jobs}")
    chosen = [flag for flag, given in (("--jobs", launch.jobs > 1), ("--shard", launch.shard),
                                       ("--slurm", launch.slurm is not None),
                                       ("--submitit", launch.submitit is not None)) if given]
    if len(chosen) > 1:
        raise ValueError(f"choose one of --jobs, --shard, --slurm, --submitit (got "
                         f"{' and '.join(chosen)})")
    start = time.time()
    child = list(argv)
    if launch.slurm is not None:
        from ..engine.cluster import slurm_array_script, write_slurm_script

        clean = without_option(without_option(child, "--slurm"), "--sbatch")
        slurm_array_script(clean, launch.slurm, launch.out, launch.sbatch)  # errors first
    if launch.submitit is not None:
        from ..engine.cluster import parse_parameters

        parameters = parse_parameters(launch.submitit_param)
    experiment = make_experiment()  # checks every option and claims the directory first
    if launch.slurm is not None:
        path = write_slurm_script(clean, launch.slurm, launch.out, launch.sbatch)
        print(f"wrote {path}: submit it with `sbatch {path}`")
        return 0
    if launch.submitit is not None:
        from ..engine.cluster import submit_shards

        clean = child
        for flag in ("--submitit", "--submitit-param", "--submitit-cluster"):
            clean = without_option(clean, flag)
        wait = launch.submitit_cluster in ("local", "debug")
        jobs = submit_shards(clean, launch.submitit, launch.out, launch.submitit_cluster,
                             parameters, wait=wait)
        print(f"{len(jobs)} submitit jobs {'finished' if wait else 'submitted'}: "
              f"{', '.join(str(j.job_id) for j in jobs)}; logs in "
              f"{launch.out / 'logs' / 'submitit'}")
        return 0
    if launch.jobs > 1:
        from ..engine.launch import run_local_shards

        if hasattr(experiment, "prepare_stages"):  # shared stages: once, with every core
            experiment.prepare_stages()
        code = run_local_shards(without_option(child, "--jobs"), launch.jobs,
                                launch.out / "logs", parsed.options.device)
        print(f"{launch.jobs} shards finished ({time.time() - start:.0f} s) → {launch.out}")
        return code
    result = experiment.run(shard)
    print(f"{result.summary()} ({time.time() - start:.0f} s) → {launch.out}")
    return 0


def run_experiment(parsed: Parsed, argv: list[str], experiment_class) -> int:
    """A sweep command's ``run``: the experiment's configuration, checked once
    (``validate``, with the options the user set: none may be one its data
    or method would ignore), then the sweep."""
    cfg = parsed.options.validate(parsed.given)
    launch = parsed.launch
    return run_sweep(parsed, argv,
                     lambda: experiment_class(cfg, launch.out, progress=launch.progress))
