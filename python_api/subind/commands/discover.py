"""`subind discover`: Subtask Induction's discovery step (paper §3.1) on any
model and data, in one process or under torchrun (DDP or FSDP2), resumable.

    subind discover --model timm:vit_base_patch16_224 --weights vit_b.safetensors \\
        --data imagefolder:shapes/ --lambdas 1e-7,5e-7 --epochs 10 --out runs/vit-b
    torchrun --nproc-per-node=8 -m subind discover … --strategy fsdp2 --dtype bf16 \\
        --checkpoint-activations --device cuda

Writes OUT/subnetwork.safetensors (1 bit per weight), OUT/density.csv (per
parameter), OUT/candidates.csv (every λ), OUT/discovery-lambda<λ>.csv (epoch
logs) and OUT/summary.json.  A killed run started again with the same
arguments resumes from its last epoch, on any number of ranks.  With
--seeds 0,1,2,… each seed's discovery is such a directory, OUT/seed-<k>, and
OUT/stability.json (with pair and block CSVs, a heatmap, and the core and
majority subnetworks) says how alike they are.
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, Optional

import torch
from torch import nn

import subind_fast as sf

from ..experiments import data_for
from ..engine.speed import COMPILE_CHOICES, KERNEL_CHOICES, apply_speed_options
from ..engine import manifest
from ..engine import validation
from ..engine.options import MISSING, Floats, Ints, JsonObject, flag
from ..engine.classification import Classification
from ..engine.ablation import CorruptedPairs
from ..engine.data_sources import (check_data_fits, check_out_outside_data, evaluation_split,
                                   local_directory)
from ..engine.controls import ShuffledLabels, random_weight_copy
from ..engine.dist_checkpoint import CheckpointedDiscovery
from ..engine.distributed import (STRATEGIES, Ranks, blocks_of, eval_loader, start,
                                 train_loader, wrap)
from ..engine.discovery_results import EXPERIMENT, write_results
from ..engine.seed_stability import seed_directory, seed_stability, write_seed_stability
from ..engine.models import HF_CLASSES, build_model, check_hf_class_applies
from ..engine.protocol import Discovery, DiscoveryHooks, check_fits, discover
from ..engine.training import BN_STATS, SumsOverRanks, reestimate_batchnorm, train_mode_for

HELP = "find a subnetwork in any model (torchrun-ready)"
RESUMABLE = True
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclass
class DiscoverConfig:
    """The model and data; with the discovery settings, what the subnetwork
    depends on: the results directory's identity (its manifest, with the
    content hashes of the weights files)."""
    model: str = MISSING
    """timm:NAME, hf:DIR or entry:MODULE:FUNCTION"""
    data: str = MISSING
    """imagefolder:DIR, entry:MODULE:FUNCTION or experiment:NAME/SET"""
    weights: Optional[str] = None
    """state-dict file for timm:/hf: models, or 'random'"""
    hf_class: Literal[tuple(sorted(HF_CLASSES))] = "causal-lm"
    """the transformers auto class of hf: models"""
    model_kwargs: JsonObject = field(default_factory=dict)
    """the model's keyword arguments as JSON, e.g. '{"num_classes": 16}'"""
    eval_data: Optional[str] = None
    """scored after each epoch (when left out: the entry point's or experiment's own, else the
    training data)"""
    image_size: Optional[int] = None
    """imagefolder: data: the input resolution (when left out: the model's)"""
    mean: Optional[Floats] = None
    """imagefolder: data: normalisation mean R,G,B (when left out: the model's)"""
    std: Optional[Floats] = None
    """imagefolder: data: normalisation std R,G,B (when left out: the model's)"""
    batch_size: int = 64
    """global batch (over all ranks)"""
    dtype: Literal[tuple(DTYPES)] = "fp32"
    """storage of the frozen weights (the logits stay fp32; fp64 for checks)"""
    autocast: Optional[Literal["bf16"]] = None
    """run the forward under autocast"""
    bn_stats: Literal[BN_STATS] = "frozen"
    """BatchNorm statistics while the masks learn: the model's running statistics, frozen,
    or each rank's batch statistics"""
    pretrained_weights: Optional[str] = None
    """lottery_ticket: the model's weights before fine-tuning (--weights: after)"""
    seeds: Optional[Ints] = None
    """run the whole discovery once per seed (OUT/seed-<k>; replaces --seed) and report how
    alike the subnetworks are: pairwise IoU against the chance level of random masks of the
    same sizes, and the weights every seed and a majority of seeds kept, each scored alone"""
    controls: bool = True
    """faithfulness controls: the same discovery on a random-weight copy of the model and on
    the data with shuffled labels (engine/controls.py); on by default, they take about twice
    the discovery's own time again (--no-controls skips them)"""


@dataclass
class DiscoverRun:
    """How the discovery runs (not part of the identity, but for the kernels
    and compilation: a run may resume on other hardware or another number of
    ranks)."""
    out: Path = MISSING
    """results directory (resumable; refuses a different configuration)"""
    device: Literal["cpu", "cuda"] = "cpu"
    """where to run"""
    strategy: Literal[STRATEGIES] = "none"
    """under torchrun: ddp (replicated) or fsdp2 (sharded, fully_shard)"""
    checkpoint_activations: bool = False
    """recompute each block's activations in backward"""
    blocks: Optional[str] = None
    """glob naming the blocks to shard or checkpoint one by one (when left out: the children of
    blocks/layers/h/stages lists)"""
    fused_optimizer: bool = True
    """the logits' optimizer with its fused kernel"""
    kernels: Literal[KERNEL_CHOICES] = "fused"
    """the masked layers' kernels: fused (ours) or eager (plain PyTorch ops)"""
    compile: Literal[COMPILE_CHOICES] = "auto"
    """torch.compile the masked model: auto (on for CUDA, off on the CPU, as measured
    fastest), on, off"""
    eval_batch_size: int = 128
    """evaluation batch per rank"""
    workers: int = 0
    """DataLoader workers per rank"""
    progress: bool = True
    """progress bars"""


OPTIONS = {"inputs": DiscoverConfig, "discovery": Discovery, "run": DiscoverRun}


def check(cfg: DiscoverConfig, d: Discovery, run: DiscoverRun, given: set) -> None:
    """Every number finite and in range, and no option given that the chosen
    model, data or method ignores (``given``: the options the user set)."""
    d.validate(given)
    if cfg.seeds is not None:
        validation.int_list("--seeds", cfg.seeds, 0)
        if len(cfg.seeds) < 2:
            raise ValueError(f"--seeds needs at least two seeds to compare, got {cfg.seeds}")
        if "seed" in given:
            raise ValueError("--seeds runs one discovery per seed; leave out --seed")
        if d.selects:
            raise ValueError(f"--method {d.method} selects weights without training: every "
                             "seed would select the same ones, so --seeds has nothing to compare")
    if (d.method == "lottery_ticket") != (cfg.pretrained_weights is not None):
        raise ValueError("--pretrained-weights goes with --method lottery_ticket (and it needs "
                         "them: the weights before fine-tuning)")
    if d.selects and "bn_stats" in given:
        raise ValueError(f"--method {d.method} selects weights without training, so "
                         "--bn-stats would be ignored; leave it out")
    validation.positive_int("--batch-size", cfg.batch_size)
    if run.eval_batch_size < 1 or run.workers < 0:
        raise ValueError("--eval-batch-size must be >= 1 and --workers >= 0")
    if cfg.autocast and cfg.dtype == "fp64":
        raise ValueError("--autocast bf16 with --dtype fp64 makes no sense")
    if "hf_class" in given:
        check_hf_class_applies(cfg.model)
    images = [spec for spec in (cfg.data, cfg.eval_data) if spec and
              spec.startswith("imagefolder:")]
    for name in ("image_size", "mean", "std"):
        if name in given and not images:
            raise ValueError(f"{flag(name)} applies to imagefolder: data; --data {cfg.data}"
                             + (f" and --eval-data {cfg.eval_data}" if cfg.eval_data else "")
                             + " come with their own preprocessing")
    if cfg.image_size is not None:
        validation.positive_int("--image-size", cfg.image_size)
    for name in ("mean", "std"):
        if getattr(cfg, name) is not None:
            validation.rgb(flag(name), getattr(cfg, name), positive=name == "std")
    if run.blocks and not (run.checkpoint_activations or run.strategy == "fsdp2"):
        raise ValueError("--blocks names the blocks to checkpoint or shard: it needs "
                         "--checkpoint-activations or --strategy fsdp2")


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


def run(parsed, argv=None) -> int:
    cfg, settings, run_options = parsed.inputs, parsed.discovery, parsed.run
    check(cfg, settings, run_options, parsed.given)
    manifest.check_out(run_options.out)
    if not run_options.progress and cfg.model.startswith("hf:"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its "Loading weights" bar
    ranks = start(run_options.device)
    try:
        if cfg.seeds:
            return _run_seeds(cfg, settings, run_options, ranks)
        return _run(cfg, settings, run_options, ranks)
    finally:
        ranks.close()


def _identity(cfg: DiscoverConfig, settings: Discovery, run: DiscoverRun) -> dict:
    """The manifest's identity: the inputs, the discovery settings, the
    kernels and compilation (the eager and fused kernels round differently,
    and a mask can flip on it: the experiments record them too), and what
    the input files hold — the weights files, an hf: directory, image folders
    (other contents at the same path are another configuration)."""
    out = run.out
    return {**asdict(cfg), **asdict(settings), "kernels": run.kernels,
            "compile": run.compile, "content": manifest.content_of(
        skip=out, weights=cfg.weights, pretrained_weights=cfg.pretrained_weights,
        model=local_directory(cfg.model), data=local_directory(cfg.data),
        eval_data=local_directory(cfg.eval_data))}


def _batches(dataset, settings: Discovery, seed_offset: int = 0):
    """``dataset`` as the discovery reads it: paired with corrupted partners
    under a corrupted ablation (engine/ablation.py), else as it is."""
    if settings.ablation != "corrupted":
        return dataset
    return CorruptedPairs(dataset, settings.seed + seed_offset)


def _inputs(cfg: DiscoverConfig, ranks: Ranks):
    """(model, data, evaluation set, task): built and checked, touching no file."""
    model = build_model(cfg.model, cfg.weights, cfg.hf_class, cfg.model_kwargs)
    data = data_for(cfg.data, model, cfg.image_size, cfg.mean, cfg.std)
    eval_set = (evaluation_split(data_for(cfg.eval_data, model, cfg.image_size, cfg.mean,
                                          cfg.std), cfg.eval_data, "--eval-data")
                if cfg.eval_data else evaluation_split(data, cfg.data, "--data"))
    dtype = DTYPES[cfg.dtype]
    if isinstance(data.task, SumsOverRanks):
        data.task.sum_over_ranks = ranks.sum  # metrics over every rank's share
    task = data.task or Classification(
        input_dtype=torch.float64 if dtype == torch.float64 else
        (torch.float32 if cfg.autocast or dtype == torch.float32 else dtype),
        autocast=torch.bfloat16 if cfg.autocast else None, sum_over_ranks=ranks.sum)
    return model, data, eval_set, task


def _run(cfg: DiscoverConfig, settings: Discovery, args: DiscoverRun, ranks: Ranks) -> int:
    started = time.time()
    torch.manual_seed(settings.seed)  # the same initialisation on every rank
    # Everything is built and checked before the results directory is touched:
    # a failed start leaves it as it was.
    check_out_outside_data(args.out, cfg.data, cfg.eval_data)
    model, data, eval_set, task = _inputs(cfg, ranks)
    pretrained = (build_model(cfg.model, cfg.pretrained_weights, cfg.hf_class, cfg.model_kwargs)
                  if cfg.pretrained_weights else None)
    check_fits(model, settings, cfg.batch_size // ranks.world)
    dtype = DTYPES[cfg.dtype]
    # Checked on the model as built (its own dtype), before it is cast and masked.
    check_data_fits(model, data.task or Classification(), data.train, eval_set,
                    model_spec=cfg.model,
                    data_spec=cfg.data, eval_spec=cfg.eval_data)
    train_batches, sampler = train_loader(_batches(data.train, settings), cfg.batch_size, ranks,
                                          settings.seed, args.workers)
    eval_batches = eval_loader(_batches(eval_set, settings, 1), args.eval_batch_size, ranks,
                               args.workers)
    with contextlib.ExitStack() as claimed:
        if ranks.is_main:
            claimed.enter_context(manifest.held(args.out, EXPERIMENT,
                                                _identity(cfg, settings, args),
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
            model, task, train_batches, eval_batches, settings,
            DiscoveryHooks(log_dir=args.out if ranks.is_main else None,
                           progress=ranks.is_main and args.progress,
                           train_mode=train_mode_for(cfg.bn_stats), in_place=True,
                           prepare=prepare, compile_model=compiled,
                           before_epoch=sampler.set_epoch,
                           state=CheckpointedDiscovery(args.out, ranks),
                           fused_optimizer=args.fused_optimizer, sum_over_ranks=ranks.sum),
            pretrained=pretrained)
        controls, not_run = {}, {}
        if cfg.controls:
            controls, not_run = _run_controls(cfg, settings, args, ranks, data, eval_set, task,
                                              pretrained, prepare, compiled)
        if ranks.is_main:
            write_results(args.out, cfg, result, ranks, notes, started, compiled, controls,
                           not_run)
        ranks.barrier()
    return 0


#: why a control is not run under an objective (engine/controls.py)
CONTROLS_NOT_RUN = {"kl": {"shuffled_labels": (
    "not run: objective kl trains on the unmasked model's outputs, not on the labels, so "
    "shuffling the labels would train the very same masks")}}


def _run_controls(cfg, settings, args, ranks, data, eval_set, task, pretrained, prepare,
                  compiled) -> tuple[dict, dict]:
    """({control: {accuracy, density}} of the same discovery on a random-weight
    copy of the model and on shuffled labels (engine/controls.py), {control:
    why it was not run}).  Each control keeps its progress under
    OUT/controls/NAME, so an interrupted run resumes it where it stopped."""
    shuffled_train = ShuffledLabels(data.train, settings.seed + 2)
    # Scored on the labels it trained on when the evaluation data are the training data.
    shuffled_eval = (shuffled_train if eval_set is data.train
                     else ShuffledLabels(eval_set, settings.seed + 3))
    runs = {"random_weights": (lambda: random_weight_copy(build_model(
                cfg.model, cfg.weights, cfg.hf_class, cfg.model_kwargs), settings.seed + 1),
                data.train, eval_set),
            "shuffled_labels": (lambda: build_model(cfg.model, cfg.weights, cfg.hf_class,
                                                    cfg.model_kwargs),
                                shuffled_train, shuffled_eval)}
    not_run = CONTROLS_NOT_RUN.get(settings.objective, {})
    found = {}
    for name, (make_model, train_set, scored_on) in runs.items():
        if name in not_run:
            continue
        folder = args.out / "controls" / name
        train_batches, sampler = train_loader(_batches(train_set, settings), cfg.batch_size,
                                              ranks, settings.seed, args.workers)
        scored_batches = eval_loader(_batches(scored_on, settings, 1), args.eval_batch_size,
                                     ranks, args.workers)
        control = discover(
            make_model(), task, train_batches, scored_batches, settings,
            DiscoveryHooks(log_dir=folder if ranks.is_main else None,
                           progress=ranks.is_main and args.progress,
                           train_mode=train_mode_for(cfg.bn_stats), in_place=True,
                           prepare=prepare, compile_model=compiled,
                           before_epoch=sampler.set_epoch,
                           state=CheckpointedDiscovery(folder, ranks),
                           fused_optimizer=args.fused_optimizer, sum_over_ranks=ranks.sum),
            pretrained=pretrained)
        found[name] = {"accuracy": control.accuracy, "density": control.density}
    return found, not_run


def _run_seeds(cfg: DiscoverConfig, settings: Discovery, args: DiscoverRun,
               ranks: Ranks) -> int:
    """One whole discovery per seed, each its own resumable directory
    OUT/seed-<k> (data order, mask noise, controls and every draw from that
    seed), then how alike their subnetworks are (engine/seed_stability.py):
    pairwise overlap against chance, the core and majority subnetworks scored
    alone on the evaluation data."""
    started = time.time()
    check_out_outside_data(args.out, cfg.data, cfg.eval_data)
    # Built and checked before the results directory is touched, as in _run.
    model, data, eval_set, task = _inputs(cfg, ranks)
    identity = {**_identity(cfg, settings, args), "seed": None}
    with contextlib.ExitStack() as claimed:
        if ranks.is_main:
            claimed.enter_context(manifest.held(args.out, EXPERIMENT, identity,
                                                hint=RERUN_HINT))
        ranks.barrier()
        for seed in cfg.seeds:
            _run(replace(cfg, seeds=None), replace(settings, seed=seed),
                 replace(args, out=seed_directory(args.out, seed)), ranks)
        eval_batches = eval_loader(_batches(eval_set, settings, 1), args.eval_batch_size, ranks,
                                   args.workers)

        def accuracy_alone(subnetwork: sf.Subnetwork) -> float:
            """With --bn-stats batch the discovery trained the BatchNorm statistics
            with the masks, so they are re-estimated on the training data first."""
            scored = subnetwork.ablate(copy.deepcopy(model), "keep")
            scored.to(DTYPES[cfg.dtype]).to(ranks.device)
            if cfg.bn_stats == "batch":
                reestimate_batchnorm(scored, task, eval_loader(
                    data.train, args.eval_batch_size, ranks, args.workers))
            return task.evaluate(scored, eval_batches).accuracy

        files = {seed: seed_directory(args.out, seed) / "subnetwork.safetensors"
                 for seed in cfg.seeds}
        found = seed_stability({seed: sf.Subnetwork.load(path) for seed, path in files.items()},
                               accuracy_alone)
        if ranks.is_main:
            write_seed_stability(args.out, found, started, files)
        ranks.barrier()
    return 0


RERUN_HINT = ("a discovery directory holds one configuration: use another --out, or rerun "
              "with the options it was started with to resume it")


