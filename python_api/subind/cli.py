"""The `subind` command line: `subind arithmetic …` runs (a shard of) the
arithmetic sweep, `subind report DIR` summarises it."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _float_list(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# (flag, config field, type, help) of the arithmetic command's overrides.
ARITHMETIC_OPTIONS = [
    ("--layers", "layers", _int_list, "layer counts, e.g. 2,4,6"),
    ("--n-disamb", "n_disambiguation", _int_list, "disambiguation sample sizes, e.g. 10,100,1000"),
    ("--conditions", "conditions", _str_list,
     "subtask_induction,scratch,random,complement,full_model,subtask_induction_unfrozen,"
     "random_unfrozen"),
    ("--seeds", "seeds", _int_list, "e.g. 0,1,2"),
    ("--base", "base", str, "base computation, e.g. 'a+a*b'"),
    ("--subtask", "subtask", str, "subtask computation, e.g. 'a*b'"),
    ("--target", "target", str, "target computation, e.g. 'a^2+a*b'"),
    ("--p", "p", int, "modulus (default 7)"),
    ("--numbers", "n_numbers", int, "number tokens 0..N-1 (the paper: 1000)"),
    ("--reinit", "reinit", str, "all (paper text) or masked (authors' code)"),
    ("--base-epochs", "base_max_epochs", int, "base training: at most this many epochs"),
    ("--base-lr", "base_lr", float, "base training learning rate"),
    ("--discovery-epochs", "discovery_epochs", int, "discovery epochs (beta 1 -> 100)"),
    ("--mask-lr", "mask_lr", float, "discovery learning rate of the mask logits"),
    ("--lambdas", "lambdas", _float_list, "L0 penalties to try, e.g. 1e-7,5e-7,1e-8"),
    ("--transfer-epochs", "transfer_epochs", int, "transfer training epochs"),
    ("--transfer-lr", "transfer_lr", float, "transfer training learning rate"),
    ("--batch-size", "batch_size", int, "batch size of base training and discovery"),
    ("--transfer-batch-size", "transfer_batch_size", int, "batch size of transfer training"),
    ("--device", "device", str, "cpu, cuda, cuda:1, ..."),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="subind", description="Subtask Induction experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    ar = sub.add_parser("arithmetic", help="the arithmetic experiment (paper §4)")
    ar.add_argument("--preset", choices=["smoke", "quick", "paper"], default="quick")
    ar.add_argument("--out", type=Path, required=True,
                    help="results directory (resumable; refuses a different configuration)")
    for flag, dest, kind, help_text in ARITHMETIC_OPTIONS:
        ar.add_argument(flag, dest=dest, type=kind, help=help_text)
    ar.add_argument("--shard", help="i/k: run every k-th run of the grid starting at i")
    ar.add_argument("--jobs", type=int, default=1,
                    help="run the grid as this many shard processes on this machine")
    ar.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="tables and figure for a results directory")
    rep.add_argument("out", type=Path)
    return parser


def _without_option(argv: list[str], flag: str) -> list[str]:
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


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "arithmetic":
            from .experiment import ArithmeticExperiment, config_for, parse_shard

            shard = parse_shard(args.shard)
            cfg = config_for(args.preset, **{dest: getattr(args, dest)
                                             for _, dest, _, _ in ARITHMETIC_OPTIONS})
            if args.jobs < 1 or (args.jobs > 1 and args.shard is not None):
                raise ValueError("--jobs must be >= 1 and cannot be combined with --shard")
            start = time.time()
            exp = ArithmeticExperiment(cfg, args.out, progress=not args.no_progress)
            if args.jobs > 1:  # checked and claimed above, once; the shards only run
                from .engine.launch import run_local_shards

                child = _without_option(list(argv if argv is not None else sys.argv[1:]),
                                        "--jobs")
                code = run_local_shards(child, args.jobs, args.out / "logs", cfg.device)
                print(f"{args.jobs} shards finished ({time.time() - start:.0f} s) → {args.out}")
                return code
            result = exp.run(shard)
            print(f"{result.summary()} ({time.time() - start:.0f} s) → {args.out}")
        else:
            from .report import report

            text, png = report(args.out)
            print(text)
            print(f"figure: {png}")
    except (ValueError, FileNotFoundError) as err:
        print(f"subind: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
