"""Command-line plumbing every sweep experiment shares: list-valued option
types, the preset/out/shard/jobs options, per-field overrides of a preset,
and running a sweep command (one shard here, or k local shard processes)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from .sweep import parse_shard


def _list_of(kind, what: str):
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")

    return parse


int_list = _list_of(int, "integers")
float_list = _list_of(float, "numbers")


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_sweep_options(parser: argparse.ArgumentParser, presets: Sequence[str],
                      default_preset: str) -> None:
    parser.add_argument("--preset", choices=list(presets), default=default_preset)
    parser.add_argument("--out", type=Path, required=True,
                        help="results directory (resumable; refuses a different configuration)")
    parser.add_argument("--shard", help="i/k: run every k-th run of the grid starting at i")
    parser.add_argument("--jobs", type=int, default=1,
                        help="run the grid as this many shard processes on this machine")
    parser.add_argument("--no-progress", action="store_true")
    cluster = parser.add_argument_group("cluster launchers (each task runs --shard i/K)")
    cluster.add_argument("--slurm", type=int, metavar="K",
                         help="write OUT/slurm/sweep.sbatch, a K-task SLURM job array, "
                              "instead of running")
    cluster.add_argument("--sbatch", action="append", metavar="--OPTION=VALUE",
                         help="an #SBATCH line for --slurm (repeatable), e.g. "
                              "--sbatch=--gres=gpu:1")
    cluster.add_argument("--submitit", type=int, metavar="K",
                         help="submit K shard jobs with submitit (SLURM when available)")
    cluster.add_argument("--submitit-param", action="append", metavar="KEY=VALUE",
                         help="submitit executor parameter (repeatable), e.g. timeout_min=240")
    cluster.add_argument("--submitit-cluster", choices=["slurm", "local", "debug"],
                         help="submitit backend (default: auto-detect)")


def add_overrides(parser: argparse.ArgumentParser, options) -> None:
    """``options``: (flag, config field, type, help) of each preset override."""
    for flag, dest, kind, help_text in options:
        parser.add_argument(flag, dest=dest, type=kind, help=help_text)


def overrides(args, options) -> dict:
    return {dest: getattr(args, dest) for _, dest, _, _ in options}


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


def config_from_preset(config_class, presets: dict, preset: str, **overrides_given):
    """``config_class`` with the preset's values, then every override that is
    not None; a configuration with ``check_given(names)`` is asked whether it
    ignores any override the user gave."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(presets)}")
    given = {k: v for k, v in overrides_given.items() if v is not None}
    cfg = config_class(**{**presets[preset], **given}).validate()
    if hasattr(cfg, "check_given"):
        cfg.check_given(set(given))
    return cfg


def add_sweep_command(subparsers, name: str, help_text: str, options,
                      experiment: Callable[[], tuple]) -> None:
    """Register ``subind <name>``: the sweep options, ``options``' overrides, and
    a handler that builds the configuration and runs the sweep.  ``experiment()``
    returns (presets, config_for(preset, **overrides), ExperimentClass)."""
    presets, _, _ = experiment()
    parser = subparsers.add_parser(name, help=help_text)
    add_sweep_options(parser, presets, "quick")
    add_overrides(parser, options)

    def run(args, argv) -> int:
        _, config_for, experiment_class = experiment()
        cfg = config_for(args.preset, **overrides(args, options))
        return run_sweep_command(
            args, argv, lambda: experiment_class(cfg, args.out, progress=not args.no_progress),
            cfg.device)

    parser.set_defaults(handler=run, resumable=True)


def run_sweep_command(args, argv, make_experiment: Callable[[], object], device: str) -> int:
    """Build the experiment (checks every argument and claims the results
    directory, once), then run this process's shard or start ``--jobs`` shards."""
    shard = parse_shard(args.shard)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    chosen = [flag for flag, given in (("--jobs", args.jobs > 1), ("--shard", args.shard),
                                       ("--slurm", args.slurm is not None),
                                       ("--submitit", args.submitit is not None)) if given]
    if len(chosen) > 1:
        raise ValueError(f"choose one of --jobs, --shard, --slurm, --submitit (got "
                         f"{' and '.join(chosen)})")
    start = time.time()
    child = list(argv if argv is not None else sys.argv[1:])
    if args.slurm is not None:
        from .cluster import slurm_array_script, write_slurm_script

        clean = without_option(without_option(child, "--slurm"), "--sbatch")
        slurm_array_script(clean, args.slurm, args.out, args.sbatch)  # its errors, before the claim
    if args.submitit is not None:
        from .cluster import parse_parameters

        parameters = parse_parameters(args.submitit_param)
    experiment = make_experiment()  # checks every argument and claims the directory first
    if args.slurm is not None:
        path = write_slurm_script(clean, args.slurm, args.out, args.sbatch)
        print(f"wrote {path}: submit it with `sbatch {path}`")
        return 0
    if args.submitit is not None:
        from .cluster import submit_shards

        clean = child
        for flag in ("--submitit", "--submitit-param", "--submitit-cluster"):
            clean = without_option(clean, flag)
        wait = args.submitit_cluster in ("local", "debug")
        jobs = submit_shards(clean, args.submitit, args.out, args.submitit_cluster,
                             parameters, wait=wait)
        print(f"{len(jobs)} submitit jobs {'finished' if wait else 'submitted'}: "
              f"{', '.join(str(j.job_id) for j in jobs)}; logs in {args.out / 'logs' / 'submitit'}")
        return 0
    if args.jobs > 1:
        from .launch import run_local_shards

        child = without_option(child, "--jobs")
        code = run_local_shards(child, args.jobs, args.out / "logs", device)
        print(f"{args.jobs} shards finished ({time.time() - start:.0f} s) → {args.out}")
        return code
    result = experiment.run(shard)
    print(f"{result.summary()} ({time.time() - start:.0f} s) → {args.out}")
    return 0
