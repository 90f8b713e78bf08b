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


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="subind", description="Subtask Induction experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    ar = sub.add_parser("arithmetic", help="the arithmetic experiment (paper §4)")
    ar.add_argument("--preset", choices=["smoke", "quick", "paper"], default="quick")
    ar.add_argument("--out", type=Path, required=True, help="results directory (resumable)")
    ar.add_argument("--layers", type=_int_list, help="e.g. 2,4,6")
    ar.add_argument("--n-disamb", type=_int_list, dest="n_disambiguation", help="e.g. 10,100,1000")
    ar.add_argument("--conditions", type=_str_list,
                    help="subtask_induction,scratch,random,complement,full_model,"
                         "subtask_induction_unfrozen,random_unfrozen")
    ar.add_argument("--seeds", type=_int_list)
    ar.add_argument("--base", help="base computation, e.g. 'a+a*b'")
    ar.add_argument("--subtask", help="subtask computation, e.g. 'a*b'")
    ar.add_argument("--target", help="target computation, e.g. 'a^2+a*b'")
    ar.add_argument("--p", type=int, help="modulus (default 7)")
    ar.add_argument("--reinit", choices=["all", "masked"])
    ar.add_argument("--shard", help="i/k: run every k-th run of the grid starting at i")
    ar.add_argument("--device", help="cpu, cuda, cuda:1, …")
    ar.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="tables and figure for a results directory")
    rep.add_argument("out", type=Path)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "arithmetic":
            from .experiment import ArithmeticExperiment, config_for, parse_shard

            shard = parse_shard(args.shard)
            cfg = config_for(args.preset, layers=args.layers, n_disambiguation=args.n_disambiguation,
                             conditions=args.conditions, seeds=args.seeds, base=args.base,
                             subtask=args.subtask, target=args.target, p=args.p,
                             reinit=args.reinit, device=args.device)
            start = time.time()
            exp = ArithmeticExperiment(cfg, args.out, progress=not args.no_progress)
            written = exp.run(shard)
            total = len(exp.grid()[shard[0]::shard[1]])
            print(f"{len(written)} runs done now, {total - len(written)} already present "
                  f"({time.time() - start:.0f} s) → {args.out}")
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
