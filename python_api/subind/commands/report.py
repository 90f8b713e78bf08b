"""`subind report DIR`: the tables and figures of a results directory; the
experiment (or `subind discover`) that wrote it is read from its manifest."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from ..engine.options import MISSING

from .. import experiments


HELP = "tables and figures for a results directory"


@dataclass
class ReportOptions:
    """The results directory of an experiment or of `subind discover`."""
    out: Annotated[Path, tyro.conf.Positional,
                    tyro.conf.arg(metavar="OUT")] = MISSING
    """the results directory"""


OPTIONS = {"report": ReportOptions}


def run(parsed, argv) -> int:
    args = parsed.options
    from ..engine import manifest

    name = manifest.read(args.out)["experiment"]
    report = experiments.reporter(name)
    if report is None:
        written = sorted(p.name for p in Path(args.out).iterdir()
                         if p.is_file() and not p.name.startswith(".")
                         and p.name != manifest.MANIFEST)
        raise ValueError(f"{args.out} holds the results of `subind {name}`, which wrote its "
                         f"outputs itself ({', '.join(written[:8]) or 'none yet'}); `subind "
                         "report` covers the experiments, `subind discover` and `subind analyze`")
    text, figures = report(args.out)
    print(text)
    for path in figures:
        print(f"figure: {path}")
    return 0
