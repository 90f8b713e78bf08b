"""`subind mean-pool`: shape-only copies of an image folder (paper §5.1)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

from ..engine.options import MISSING


HELP = "fill each segment of every image with its mean colour (shape-only images)"


@dataclass
class MeanPoolOptions:
    """The images, where their pooled copies go, and how they are segmented."""
    source: Annotated[Path, tyro.conf.Positional,
                       tyro.conf.arg(metavar="SOURCE")] = MISSING
    """folder of images (any depth)"""
    target: Annotated[Path, tyro.conf.Positional,
                       tyro.conf.arg(metavar="TARGET")] = MISSING
    """output folder (the same relative paths, PNG)"""
    method: Literal["slic", "felzenszwalb", "sam", "masks"] = "slic"
    """the segmenter; masks reads ground-truth masks from --masks"""
    masks: Optional[Path] = None
    """folder of ground-truth masks, the same relative paths as the images (one colour per
    segment)"""
    segments: int = 64
    """SLIC: about this many segments"""
    sam_checkpoint: Optional[Path] = None
    """Segment Anything checkpoint file"""
    sam_model: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    """Segment Anything model size"""
    device: str = "cpu"
    """where SAM runs"""
    preview: int = 8
    """before/after pairs in preview.png"""
    progress: bool = True
    """a progress bar (on a terminal)"""


OPTIONS = {"mean_pool": MeanPoolOptions}


def run(parsed, argv) -> int:
    args = parsed.options
    from ..engine import manifest
    from ..shape_bias.pooling import mask_labels, mean_pool, pooled_paths, segmenter

    given = {flag for flag, value in (("--masks", args.masks), ("--sam-checkpoint",
                                                                  args.sam_checkpoint))
             if value is not None}
    applies = {"masks": {"--masks"}, "sam": {"--sam-checkpoint"}}.get(args.method, set())
    if given - applies:
        raise ValueError(f"{', '.join(sorted(given - applies))} would be ignored by --method "
                         f"{args.method}")
    if args.preview < 0:
        raise ValueError(f"--preview must be >= 0, got {args.preview}")
    manifest.check_out(args.target)
    outputs = pooled_paths(args.source, args.target, args.preview)  # collisions, before work
    if args.method == "masks":
        if args.masks is None:
            raise ValueError("--method masks needs --masks DIR")
        if not args.masks.is_dir():
            raise FileNotFoundError(f"--masks folder {args.masks} does not exist")
        root = args.source

        def labels_of(path, image):
            relative = path.relative_to(root)
            candidates = [args.masks / relative.with_suffix(s) for s in (".png", relative.suffix)]
            found = next((c for c in candidates if c.is_file()), candidates[0])
            return mask_labels(found, image.shape[:2])
    else:
        if args.segments < 1:
            raise ValueError(f"--segments must be >= 1, got {args.segments}")
        segment = segmenter(args.method, args.sam_checkpoint, args.sam_model, args.device,
                            args.segments)

        def labels_of(path, image):
            return segment(image)

    identity = {"source": str(args.source.resolve()), "method": args.method,
                "masks": str(args.masks.resolve()) if args.masks else None,
                "segments": args.segments if args.method == "slic" else None,
                "sam_model": args.sam_model if args.method == "sam" else None,
                "preview": args.preview,
                "content": manifest.content_of(sam_checkpoint=args.sam_checkpoint)}
    with manifest.held(args.target, "mean-pool", identity,
                       hint="a pooled folder holds one source pooled one way: use another target"):
        count = mean_pool(outputs, args.target, labels_of, args.preview, progress=args.progress)
    print(f"{count} images mean-pooled ({args.method}) → {args.target}"
          + (f"; preview {args.target / 'preview.png'}" if args.preview else ""))
    return 0
