"""The `subind` command line.  Each experiment registers its commands
(`subind arithmetic …`, `subind vision …` and its tools); `subind report DIR`
finds the experiment from the directory's manifest and writes its report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import analyze_cli, discover_cli, experiments, plan_memory_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="subind", description="Subtask Induction experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in experiments.EXPERIMENTS:
        experiments.load(name).register(sub)
    discover_cli.register(sub)
    plan_memory_cli.register(sub)
    analyze_cli.register(sub)
    rep = sub.add_parser("report", help="tables and figures for a results directory")
    rep.add_argument("out", type=Path)
    rep.set_defaults(handler=_report)
    return parser


def _report(args, argv) -> int:
    from .engine import manifest

    name = manifest.read(args.out)["experiment"]
    if name != discover_cli.EXPERIMENT and name not in experiments.EXPERIMENTS:
        raise ValueError(f"{args.out} holds the results of `subind {name}`, which wrote its "
                         f"tables and figures itself (see {args.out / 'summary.*'}); `subind "
                         "report` covers the experiments and `subind discover`")
    source = discover_cli if name == discover_cli.EXPERIMENT else experiments.load(name)
    text, figures = source.report(args.out)
    print(text)
    for path in figures:
        print(f"figure: {path}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.handler(args, argv)
    except (ValueError, OSError, ImportError) as err:  # ImportError: a missing extra
        print(f"subind: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = ("; run the same command again to resume (finished work is kept)"
                  if getattr(args, "resumable", False) else "")
        print(f"subind: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
