"""`subind discover`: Subtask Induction's discovery step (paper §3.1) on any
model and data, in one process or under torchrun (DDP or FSDP2), resumable.

    subind discover --model timm:vit_base_patch16_224 --weights vit_b.safetensors \\
        --data imagefolder:shapes/ --lambdas 1e-7,5e-7 --epochs 10 --out runs/vit-b
    torchrun --nproc-per-node=8 -m subind discover … --strategy fsdp2 --dtype bf16 \\
        --checkpoint-activations --device cuda

Writes OUT/subnetwork.safetensors (1 bit per weight), OUT/density.csv (per
parameter), OUT/candidates.csv (every λ), OUT/discovery-lambda<λ>.csv (epoch
logs) and OUT/summary.json.  A killed run started again with the same
arguments resumes from its last epoch, on any number of ranks.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import subind_fast as sf

from . import experiments
from .engine.speed import COMPILE_CHOICES, KERNEL_CHOICES, apply_speed_options
from .engine import manifest
from .engine import validation as check
from .engine.cli import float_list
from .engine.data_sources import Classification, check_data_fits, resolve
from .engine.dist_checkpoint import CheckpointedDiscovery
from .engine.distributed import (STRATEGIES, Ranks, blocks_of, eval_loader, start,
                                 train_loader, wrap)
from .engine.files import atomic_write_json, atomic_write_text
from .engine.models import HF_CLASSES, build_model, check_hf_class_applies, parse_kwargs
from .engine.protocol import PAPER_LAMBDAS, discover
from .engine.training import set_training_mode

EXPERIMENT = "discover"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclass
class DiscoverConfig:
    """What a results directory's subnetwork depends on (the manifest's
    identity, with the content hashes of the weights files); how it is run —
    device, ranks, strategy, checkpointing, workers — is not part of it, so a
    run may resume differently.  The defaults here are the command's."""
    model: str
    data: str
    weights: Optional[str] = None
    hf_class: str = "causal-lm"
    model_kwargs: dict = field(default_factory=dict)
    eval_data: Optional[str] = None
    image_size: Optional[int] = None
    mean: Optional[list] = None
    std: Optional[list] = None
    include: Optional[list] = None
    exclude: Optional[list] = None
    lambdas: list = field(default_factory=lambda: list(PAPER_LAMBDAS))
    epochs: int = 10
    beta_final: float = 100.0
    mask_lr: float = 1e-3
    mask_init: float = -0.1
    optimizer: str = "adam"
    batch_size: int = 64
    seed: int = 0
    dtype: str = "fp32"
    autocast: Optional[str] = None
    bn_stats: str = "frozen"
    method: str = "continuous"
    granularity: str = "weight"
    n_samples: int = 1
    anneal_temperature: bool = False
    density: Optional[float] = None
    pretrained_weights: Optional[str] = None


_DEFAULTS = {f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)
             for f in fields(DiscoverConfig)}
# Options that only the trained mask methods use (a selection method ignores them).
_TRAINING_OPTIONS = ("lambdas", "epochs", "beta_final", "mask_lr", "mask_init", "optimizer",
                     "bn_stats", "anneal_temperature")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(name: str) -> str:
    return f" (default: {_DEFAULTS[name]})"


def register(subparsers) -> None:
    p = subparsers.add_parser("discover", help="find a subnetwork in any model (torchrun-ready)",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True, help="timm:NAME, hf:DIR or entry:MODULE:FUNCTION")
    g.add_argument("--weights", help="state-dict file for timm:/hf: models, or 'random'")
    g.add_argument("--hf-class", choices=sorted(HF_CLASSES), help="hf: models" +
                   _default("hf_class"))
    g.add_argument("--model-kwargs", help='JSON keyword arguments, e.g. \'{"num_classes": 16}\'')
    g.add_argument("--include", action="append", help="glob on layer names to mask (repeatable)")
    g.add_argument("--exclude", action="append", help="glob on layer names to leave (repeatable)")
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True,
                   help="imagefolder:DIR, entry:MODULE:FUNCTION or experiment:NAME/SET")
    g.add_argument("--eval-data", help="scored after each epoch (default: the entry point's "
                                       "or experiment's own, else the training data)")
    g.add_argument("--image-size", type=int, help="imagefolder: data (default: the model's)")
    g.add_argument("--mean", type=float_list, help="imagefolder: data, R,G,B")
    g.add_argument("--std", type=float_list, help="imagefolder: data, R,G,B")
    g = p.add_argument_group("discovery (paper §3.1)")
    g.add_argument("--lambdas", type=float_list, help="L0 penalties" + _default("lambdas"))
    g.add_argument("--epochs", type=int, help=_default("epochs"))
    g.add_argument("--beta-final", type=float, help=_default("beta_final"))
    g.add_argument("--mask-lr", type=float, help=_default("mask_lr"))
    g.add_argument("--mask-init", type=float, help=_default("mask_init"))
    g.add_argument("--optimizer", choices=["adam", "adamw"], help=_default("optimizer"))
    g.add_argument("--method", choices=sf.nn.METHODS,
                   help="how the mask is trained or chosen (subind_fast/nn/methods.py); "
                   "magnitude needs --density, lottery_ticket also --pretrained-weights" +
                   _default("method"))
    g.add_argument("--granularity", choices=sf.nn.GRANULARITIES,
                   help="one mask logit per weight or per output unit" + _default("granularity"))
    g.add_argument("--n-samples", type=int,
                   help="mask samples per batch (hard_concrete, gumbel), each on a batch slice")
    g.add_argument("--anneal-temperature", action="store_true",
                   help="sampled methods: anneal β = 1/τ to --beta-final (default: fixed)")
    g.add_argument("--density", type=float, help="the fraction a selection method keeps")
    g.add_argument("--pretrained-weights",
                   help="lottery_ticket: the model's weights before fine-tuning (--weights: after)")
    g.add_argument("--batch-size", type=int, help="global batch (over all ranks)" +
                   _default("batch_size"))
    g.add_argument("--eval-batch-size", type=int, default=128, help="per rank")
    g.add_argument("--seed", type=int, help=_default("seed"))
    g.add_argument("--bn-stats", choices=["frozen", "batch"],
                   help="BatchNorm: the model's running statistics (default), or each "
                        "rank's batch statistics")
    g = p.add_argument_group("memory and speed")
    g.add_argument("--dtype", choices=sorted(DTYPES),
                   help="storage of the frozen weights (the logits stay fp32; fp64 for checks)" +
                   _default("dtype"))
    g.add_argument("--autocast", choices=["bf16"], help="run the forward under autocast")
    g.add_argument("--checkpoint-activations", action="store_true",
                   help="recompute each block's activations in backward")
    g.add_argument("--no-fused", action="store_true",
                   help="the logits' optimizer without its fused kernel")
    g.add_argument("--kernels", choices=KERNEL_CHOICES, default="fused",
                   help="the masked layers' kernels: fused (ours) or eager (plain PyTorch ops)")
    g.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                   help="torch.compile the masked model: auto (on for CUDA, off on the CPU, "
                        "as measured fastest), on, off")
    g.add_argument("--strategy", choices=STRATEGIES, default="none",
                   help="under torchrun: ddp (replicated) or fsdp2 (sharded, fully_shard)")
    g.add_argument("--blocks", help="glob naming the blocks to shard/checkpoint one by one "
                                    "(default: children of blocks/layers/h/stages lists)")
    g.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    g.add_argument("--workers", type=int, default=0, help="DataLoader workers per rank")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=run, resumable=True)


def config_of(args) -> DiscoverConfig:
    """The configuration the options give, checked: every number finite and in
    range, and no option given that the chosen model, data or method ignores."""
    # Flags left out are None (store_true ones False): the dataclass's defaults apply.
    given = {f.name: getattr(args, f.name) for f in fields(DiscoverConfig)
             if getattr(args, f.name) is not None and getattr(args, f.name) is not False}
    if "model_kwargs" in given:
        given["model_kwargs"] = parse_kwargs(given["model_kwargs"])
    cfg = DiscoverConfig(**given)
    method = sf.nn.MaskMethod(cfg.method, cfg.granularity, cfg.n_samples)  # named errors
    if (cfg.method == "lottery_ticket") != (cfg.pretrained_weights is not None):
        raise ValueError("--pretrained-weights goes with --method lottery_ticket (and it needs "
                         "them: the weights before fine-tuning)")
    if method.trained:
        if cfg.density is not None:
            raise ValueError(f"--density is for the selection methods (magnitude, "
                             f"lottery_ticket); --method {cfg.method} finds its density "
                             "through --lambdas")
        if cfg.anneal_temperature and not method.sampled:
            raise ValueError(f"--anneal-temperature is for the sampled methods (hard_concrete, "
                             f"gumbel); --method {cfg.method} always anneals β")
    else:
        ignored = [_flag(name) for name in _TRAINING_OPTIONS if name in given]
        if ignored:
            raise ValueError(f"--method {cfg.method} selects weights without training, so "
                             f"{', '.join(ignored)} would be ignored; leave them out")
        if cfg.density is None:
            raise ValueError(f"--method {cfg.method} needs --density (the fraction to keep)")
        check.in_range("--density", cfg.density, 0, 1, low_open=True)
    check.unique_positive_numbers("--lambdas", cfg.lambdas)
    for name in ("epochs", "batch_size"):
        check.positive_int(_flag(name), getattr(cfg, name))
    check.positive("--beta-final", cfg.beta_final)
    check.positive("--mask-lr", cfg.mask_lr)
    check.finite("--mask-init", cfg.mask_init)
    check.non_negative_int("--seed", cfg.seed)
    if args.eval_batch_size < 1 or args.workers < 0:
        raise ValueError("--eval-batch-size must be >= 1 and --workers >= 0")
    if cfg.autocast and cfg.dtype == "fp64":
        raise ValueError("--autocast bf16 with --dtype fp64 makes no sense")
    if "hf_class" in given:
        check_hf_class_applies(cfg.model)
    images = [spec for spec in (cfg.data, cfg.eval_data) if spec and
              spec.startswith("imagefolder:")]
    for name in ("image_size", "mean", "std"):
        if name in given and not images:
            raise ValueError(f"{_flag(name)} applies to imagefolder: data; --data {cfg.data}"
                             + (f" and --eval-data {cfg.eval_data}" if cfg.eval_data else "")
                             + " come with their own preprocessing")
    if cfg.image_size is not None:
        check.positive_int("--image-size", cfg.image_size)
    for name in ("mean", "std"):
        if getattr(cfg, name) is not None:
            check.rgb(_flag(name), getattr(cfg, name), positive=name == "std")
    if args.blocks and not (args.checkpoint_activations or args.strategy == "fsdp2"):
        raise ValueError("--blocks names the blocks to checkpoint or shard: it needs "
                         "--checkpoint-activations or --strategy fsdp2")
    return cfg


def data_for(spec: str, model: nn.Module, size=None, mean=None, std=None):
    """engine.data_sources.resolve with the experiments' data sets."""
    return resolve(spec, model, experiments.discovery_sets, size, mean, std)


def _enable_activation_checkpointing(model: nn.Module, blocks_pattern: Optional[str]) -> str:
    """The model's own switch where it has one, else PyTorch's checkpoint
    wrapper around each block."""
    if hasattr(model, "set_grad_checkpointing"):  # timm
        model.set_grad_checkpointing(True)
        return "timm set_grad_checkpointing"
    if getattr(model, "supports_gradient_checkpointing", False):  # transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return "transformers gradient_checkpointing_enable"
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        apply_activation_checkpointing)

    chosen = set(map(id, blocks_of(model, blocks_pattern)))
    if not chosen:
        raise ValueError("--checkpoint-activations: found no blocks to checkpoint; name them "
                         "with --blocks")
    apply_activation_checkpointing(model, check_fn=lambda m: id(m) in chosen)
    return f"checkpoint_wrapper on {len(chosen)} blocks"


def _density_table(sub) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["parameter", "shape", "kept", "total", "density"])
    for name, (kept, total) in sub.counts().items():
        writer.writerow([name, "x".join(map(str, sub.shape(name))), kept, total,
                         f"{kept / total:.6f}" if total else "0"])
    return buffer.getvalue()


def run(args, argv=None) -> int:
    cfg = config_of(args)
    manifest.check_out(args.out)
    ranks = start(args.device)
    try:
        return _run(cfg, args, ranks)
    finally:
        ranks.close()


def _identity(cfg: DiscoverConfig) -> dict:
    """The manifest's identity: the configuration, and what the weights files
    hold (a file replaced at the same path is another configuration)."""
    return {**asdict(cfg), "content": manifest.content_of(
        weights=cfg.weights, pretrained_weights=cfg.pretrained_weights)}


def _run(cfg: DiscoverConfig, args, ranks: Ranks) -> int:
    started = time.time()
    torch.manual_seed(cfg.seed)  # the same initialisation on every rank
    # Everything is built and checked before the results directory is touched:
    # a failed start leaves it as it was.
    model = build_model(cfg.model, cfg.weights, cfg.hf_class, cfg.model_kwargs)
    data = data_for(cfg.data, model, cfg.image_size, cfg.mean, cfg.std)
    eval_set = (data_for(cfg.eval_data, model, cfg.image_size, cfg.mean, cfg.std).train
                if cfg.eval_data else (data.eval or data.train))
    pretrained = (build_model(cfg.model, cfg.pretrained_weights, cfg.hf_class, cfg.model_kwargs)
                  if cfg.pretrained_weights else None)
    dtype = DTYPES[cfg.dtype]
    if data.task is not None and hasattr(data.task, "sum_over_ranks"):
        data.task.sum_over_ranks = ranks.sum  # metrics over every rank's share
    task = data.task or Classification(
        input_dtype=torch.float64 if dtype == torch.float64 else
        (torch.float32 if cfg.autocast or dtype == torch.float32 else dtype),
        autocast=torch.bfloat16 if cfg.autocast else None, sum_over_ranks=ranks.sum)
    # Checked on the model as built (its own dtype), before it is cast and masked.
    check_data_fits(model, data.task or Classification(), data.train, eval_set,
                    model_spec=cfg.model,
                    data_spec=cfg.data, eval_spec=cfg.eval_data)
    train_batches, sampler = train_loader(data.train, cfg.batch_size, ranks, cfg.seed,
                                          args.workers)
    eval_batches = eval_loader(eval_set, args.eval_batch_size, ranks, args.workers)
    with contextlib.ExitStack() as claimed:
        if ranks.is_main:
            claimed.enter_context(manifest.held(args.out, EXPERIMENT, _identity(cfg),
                                                hint=RERUN_HINT))
        ranks.barrier()
        notes = []

        def prepare(masked: nn.Module) -> nn.Module:
            masked.to(dtype)  # frozen weights in dtype; fp32 logits stay fp32 (mask_state.py)
            masked.to(ranks.device)
            if args.checkpoint_activations:
                notes.append(_enable_activation_checkpointing(masked, args.blocks))
            return wrap(masked, args.strategy, ranks, blocks_of(masked, args.blocks))

        compiled = apply_speed_options(args.kernels, args.compile, args.device)
        result = discover(
            model, task, train_batches, eval_batches, include=cfg.include,
            exclude=cfg.exclude, lambdas=cfg.lambdas, epochs=cfg.epochs,
            beta_final=cfg.beta_final, mask_lr=cfg.mask_lr, optimizer=cfg.optimizer,
            mask_init=cfg.mask_init, seed=cfg.seed,
            log_dir=args.out if ranks.is_main else None,
            progress=ranks.is_main and not args.no_progress,
            train_mode=set_training_mode(cfg.bn_stats),
            in_place=True, prepare=prepare, before_epoch=sampler.set_epoch,
            state=CheckpointedDiscovery(args.out, ranks), fused=not args.no_fused,
            sum_over_ranks=ranks.sum,
            method=sf.nn.MaskMethod(cfg.method, cfg.granularity, cfg.n_samples),
            anneal_temperature=cfg.anneal_temperature, density=cfg.density,
            pretrained=pretrained,
            compile_model=compiled)
        if ranks.is_main:
            _write_results(args.out, cfg, result, ranks, notes, time.time() - started, compiled)
        ranks.barrier()
    return 0


RERUN_HINT = ("a discovery directory holds one configuration: use another --out, or rerun "
              "with the options it was started with to resume it")


def report(out: Path) -> tuple[str, list]:
    """`subind report OUT` for a discovery directory: the λ candidates and the
    per-parameter density table."""
    out = Path(out)
    if not (out / "summary.json").is_file():
        raise FileNotFoundError(f"{out}: no summary.json yet (the discovery has not finished)")
    import json

    summary = json.loads((out / "summary.json").read_text())
    lines = [f"# discovery in {out}", "",
             f"chosen λ = {summary['l0_lambda']:g}: accuracy {summary['accuracy']:.4f}, density "
             f"{summary['density']:.4f} ({summary['ranks']} rank(s), {summary['seconds']} s)", "",
             "| λ | accuracy | density |", "|---|---|---|"]
    with open(out / "candidates.csv", newline="") as f:
        lines += [f"| {r['l0_lambda']} | {r['accuracy']} | {r['density']} |"
                  for r in csv.DictReader(f)]
    lines += ["", "| parameter | shape | kept | total | density |", "|---|---|---|---|---|"]
    with open(out / "density.csv", newline="") as f:
        lines += [f"| {r['parameter']} | {r['shape']} | {r['kept']} | {r['total']} | "
                  f"{r['density']} |" for r in csv.DictReader(f)]
    return "\n".join(lines), []


def _write_results(out: Path, cfg, result, ranks: Ranks, notes, seconds: float,
                   compiled: bool) -> None:
    result.subnetwork.save(out / "subnetwork.safetensors")
    atomic_write_text(out / "density.csv", _density_table(result.subnetwork))
    atomic_write_text(out / "candidates.csv", "l0_lambda,accuracy,density\n" + "".join(
        f"{lam:g},{acc:.6f},{dens:.6f}\n" for lam, acc, dens in result.candidates))
    atomic_write_json(out / "summary.json", {
        "l0_lambda": result.l0_lambda, "accuracy": result.accuracy,
        "density": result.density, "ranks": ranks.world, "seconds": round(seconds, 1),
        "activation_checkpointing": notes[0] if notes else None,
        "kernels": sf.kernels(), "compiled": compiled})
    print(f"subnetwork: λ={result.l0_lambda:g}, accuracy {result.accuracy:.4f}, density "
          f"{result.density:.4f} ({ranks.world} rank(s), {seconds:.0f} s) → "
          f"{out / 'subnetwork.safetensors'}")
