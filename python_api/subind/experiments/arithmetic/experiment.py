"""The arithmetic Subtask Induction experiment (paper §4, App. B) on the
generic engine: a resumable, shardable sweep over (condition, layers, N, seed).

Under one results directory (its manifest.json records the configuration):

    base/L{n}/model.safetensors        the model trained on the base computation (+ .json)
    subnetworks/L{n}.safetensors       the subnetwork discovered for the subtask (+ .json)
    subnetworks/L{n}/seed-{k}.safetensors  … with --discovery-seeds: one per discovery seed,
                                       beside their stability (engine/discovery_seeds.py)
    runs/{condition}/L{n}-N{N}-s{seed}.json   one record per transfer run
"""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Literal, Optional

import torch
from torch import nn

import subind_fast as sf
from subind_fast.subnetworks.transfer import REINIT_POLICIES

from ...engine import manifest
from ...engine.options import config_from_preset, identity_of
from ...engine import validation as check
from ...engine.ablation import PairedTensorBatches
from ...engine.discovery_seeds import DiscoverySeeds, SeededDiscovery, one_or_seeded
from ...engine.models import load_model_file, save_model_file
from ...engine.records import software_versions
from ...engine.options import Ints, Strs
from ...engine.speed import (COMPILE_CHOICES, KERNEL_CHOICES, apply_speed_options,
                             check_speed_options)
from ...engine.protocol import (CONDITIONS, PAPER_LAMBDAS, Discovery, DiscoveryHooks, check_fits,
                                discover, needs_subnetwork, transfer_condition)
from ...engine.sweep import Sweep, SweepResult, cached_stage
from ...engine.training import EpochLog, TensorBatches, train
from . import data as A
from .expressions import parse
from .task import LastTokenTask

EXPERIMENT = "arithmetic"
# Which runs make up the sweep; every record is keyed by one point of this grid.
GRID_FIELDS = ("conditions", "layers", "n_disambiguation", "seeds")
KEY_FIELDS = ("condition", "layers", "n_disambiguation", "seed")
RECORD_FIELDS = KEY_FIELDS + ("test_accuracy", "eval_accuracy", "epoch", "config")
DISCOVERY_EVAL_SAMPLES = 2000
EVAL_BATCH = 4096


GPT2_MASKED_LAYERS = ("transformer.h.*.attn.*", "transformer.h.*.mlp.*")


@dataclass
class ArithmeticConfig:
    """The arithmetic experiment's options, with the paper's values as
    defaults (App. B); the presets start from other values."""
    base: str = "a+a*b"
    """the base computation the model first learns"""
    subtask: str = "a*b"
    """the subtask whose subnetwork is discovered and transferred"""
    target: str = "a^2+a*b"
    """the target computation the transfer trains on"""
    p: int = A.DEFAULT_P
    """the modulus"""
    n_numbers: int = A.DEFAULT_NUMBERS
    """number tokens 0..N-1 (the paper: 1000)"""
    layers: Ints = field(default_factory=lambda: [2, 4, 6, 8, 10, 12])
    """layer counts of the GPT-2 models (grid axis)"""
    n_disambiguation: Ints = field(default_factory=lambda: [
        int(round(10 ** (1 + 3 * i / 15))) for i in range(16)])  # 16 values, 10 … 10⁴
    """disambiguation sample sizes (grid axis)"""
    conditions: Strs = field(default_factory=lambda: ["subtask_induction", "scratch", "random",
                                                      "complement", "full_model"])
    """transfer conditions (grid axis): subtask_induction, scratch, random, complement,
    full_model, subtask_induction_unfrozen, random_unfrozen"""
    seeds: Ints = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """seeds (grid axis)"""
    n_embd: int = 128
    """embedding size"""
    n_head: int = 4
    """attention heads"""
    n_inner: int = 512
    """MLP width"""
    base_fraction: float = 0.2
    """share of the (a, b) pairs the base model trains on"""
    base_test_samples: int = 20_000
    """held-out pairs that score the base model"""
    base_lr: float = 5e-4
    """base training learning rate"""
    base_max_epochs: int = 500
    """base training: at most this many epochs"""
    base_target_accuracy: float = 0.999
    """base training stops at this test accuracy"""
    subtask_samples: int = 50_000
    """subtask pairs for discovery"""
    discovery: Discovery = field(default_factory=lambda: Discovery(epochs=50))
    """how the subnetwork is discovered: every setting of `subind discover`, with the
    paper's 50 epochs; --include defaults to the GPT-2 blocks' attention and MLP layers"""
    repeated_discovery: DiscoverySeeds = field(default_factory=DiscoverySeeds)
    """the discovery over several seeds (--discovery-seeds) and the subnetwork each transfer
    run receives (--transfer-subnetwork)"""
    transfer_epochs: int = 100
    """transfer training epochs"""
    transfer_lr: float = 2e-4
    """transfer training learning rate"""
    batch_size: int = 512
    """batch size of base training and discovery"""
    transfer_batch_size: int = 32
    """batch size of transfer training (the transfer sets are small: enough steps per epoch)"""
    reinit: Literal["all", "masked"] = "all"
    """all (the paper text) or masked (the authors' code): what the transfer re-initialises"""
    device: str = "cpu"
    """cpu, cuda, cuda:1, ..."""
    kernels: Literal[KERNEL_CHOICES] = "fused"
    """the masked layers' kernels: fused (ours) or eager (plain PyTorch ops)"""
    compile: Literal[COMPILE_CHOICES] = "auto"
    """torch.compile the discovery model: auto (on for CUDA, off on the CPU), on, off"""

    def validate(self, given: Iterable[str] = ()) -> "ArithmeticConfig":
        """Every setting in range; ``given`` (the options the user set) holds
        none the discovery method would ignore."""
        """Every field checked before any training (errors name the field)."""
        check_speed_options(self.kernels, self.compile)
        for name in ("base", "subtask", "target"):
            parse(getattr(self, name))  # raises ExpressionError naming the symbol
        vocab = A.Vocabulary(self.n_numbers, self.p)
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown or not self.conditions:
            raise ValueError(f"unknown conditions {unknown or self.conditions}; choose from "
                             f"{sorted(CONDITIONS)}")
        check.int_list("layers", self.layers, 1)
        check.int_list("seeds", self.seeds, 0)
        check.int_list("n_disambiguation", self.n_disambiguation, 0)
        too_many = [n for n in self.n_disambiguation if n > vocab.n_pairs]
        if too_many:
            raise ValueError(f"n_disambiguation {too_many} outside 0..{vocab.n_pairs} "
                             f"(the number of (a, b) pairs)")
        for name in ("n_embd", "n_head", "n_inner", "base_test_samples", "base_max_epochs",
                     "subtask_samples", "transfer_epochs", "batch_size",
                     "transfer_batch_size"):
            check.positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("base_lr", "transfer_lr"):
            check.positive(name, getattr(self, name))
        check.in_range("base_fraction", self.base_fraction, 0, 1, low_open=True)
        check.in_range("base_target_accuracy", self.base_target_accuracy, 0, 1)
        self.discovery.validate(given)
        self.repeated_discovery.validate(self.seeds, self.discovery.selects, given)
        if self.repeated_discovery.repeated and not needs_subnetwork(self.conditions):
            raise ValueError(f"--discovery-seeds repeats the discovery, but none of the "
                             f"conditions {self.conditions} transfers a subnetwork")
        if self.reinit not in REINIT_POLICIES:
            raise ValueError(f"reinit must be 'all' or 'masked', got {self.reinit!r}")
        check.device(self.device)
        return self

    def discovery_settings(self) -> Discovery:
        """The discovery as it runs: on the blocks' attention and MLP layers
        unless --include names others (the output layer shares the embedding's
        weights)."""
        return replace(self.discovery, include=self.discovery.include or list(GPT2_MASKED_LAYERS))

    def identity(self) -> dict:
        """The fields that define the experiment (the results-directory
        manifest): all but the grid axes and the device (and the repeated
        discovery's options when there is none)."""
        return identity_of(self, GRID_FIELDS + ("device",)
                           + self.repeated_discovery.left_out_of_identity("repeated_discovery"))


PRESETS = {
    # end-to-end in well under a minute on 2 CPU cores (tests)
    "smoke": dict(n_numbers=50, layers=[1], n_disambiguation=[0, 50], seeds=[0],
                  conditions=["subtask_induction", "scratch", "random"], n_embd=32, n_inner=64,
                  base_fraction=0.5, base_test_samples=500, base_max_epochs=15,
                  subtask_samples=1000, discovery=dict(epochs=3, lambdas=[1e-7], mask_lr=5e-2),
                  transfer_epochs=5,
                  batch_size=128, base_lr=3e-3),
    # the demo: the paper's numbers 0..999 (10⁶ pairs, so N = 1000 is the paper's 0.1 %), a
    # 2-layer model, a reduced grid and 2 seeds, and the paper's discovery (50 epochs, β 1 →
    # 100, the λ grid {1e-7, 5e-7, 1e-8}, the most accurate then sparsest); 18 min on 2 cores
    "quick": dict(n_numbers=1000, layers=[2], n_disambiguation=[10, 30, 100, 300, 1000, 3000],
                  seeds=[0, 1], conditions=["subtask_induction", "scratch", "random"],
                  base_lr=1e-3, base_max_epochs=80, base_test_samples=5000, subtask_samples=10_000,
                  discovery=dict(epochs=50, lambdas=list(PAPER_LAMBDAS)), transfer_epochs=40,
                  transfer_lr=1e-3, batch_size=256, reinit="masked"),
    # the paper's full grid (a GPU job)
    "paper": dict(),
}
# the README's tables: the demo's runs with 5 seeds, so every comparison rests on 5 paired seeds
PRESETS["tables"] = dict(PRESETS["quick"], seeds=[0, 1, 2, 3, 4])

# The paper's other arithmetic pairs (App. B.4; p = 7, numbers 0..999): (name, base
# computation, subtask found in the base model, downstream target).  Each runs at the
# quick budget ("quick-NAME") or the paper's ("paper-NAME").
APPENDIX_B4_PAIRS = (
    ("ab-to-a2+ab+b2", "a+a*b", "a*b", "a^2+a*b+b^2"),      # Fig. 8
    ("ab-to-a3+ab", "a+a*b", "a*b", "a^3+a*b"),              # Fig. 8, Fig. 10 right (helpful)
    ("a2-to-a2+ab+b2", "a^2+b^2", "a^2", "a^2+a*b+b^2"),     # Fig. 9
    ("a2-to-a2+ab", "a^2+b^2", "a^2", "a^2+a*b"),            # Fig. 9
    ("a+b-to-a2-b2", "a^2+a*b", "a+b", "a^2-b^2"),           # Fig. 10 left
    ("a2-to-a2-b2", "a^2+b^2", "a^2", "a^2-b^2"),            # Fig. 10 left
    ("a2-to-a3+ab", "a^2+b^2", "a^2", "a^3+a*b"),            # Fig. 10 right (unhelpful)
)
for _name, _base, _subtask, _target in APPENDIX_B4_PAIRS:
    for _budget in ("quick", "paper"):
        PRESETS[f"{_budget}-{_name}"] = dict(PRESETS[_budget], base=_base, subtask=_subtask,
                                             target=_target)


def config_for(preset: str, **overrides) -> ArithmeticConfig:
    return config_from_preset(ArithmeticConfig, PRESETS, preset, **overrides)


# ------------------------------------------------------------------ model
def make_model(cfg: ArithmeticConfig, n_layer: int, seed: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = A.Vocabulary(cfg.n_numbers, cfg.p)
    config = GPT2Config(vocab_size=vocab.size, n_positions=4, n_embd=cfg.n_embd,
                        n_layer=n_layer, n_head=cfg.n_head, n_inner=cfg.n_inner,
                        bos_token_id=vocab.sep, eos_token_id=vocab.sep)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    # Built where torch's default device says (the CPU, or the meta device for
    # `subind plan-memory`); moved only when the configuration asks for another.
    return model if cfg.device == "cpu" else model.to(cfg.device)


# ------------------------------------------------------------------ stages
class ArithmeticExperiment:
    def __init__(self, cfg: ArithmeticConfig, out: Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out), progress  # validated where built
        self.vocab = A.Vocabulary(cfg.n_numbers, cfg.p)
        self.task = LastTokenTask()
        self._check_writable()
        if needs_subnetwork(cfg.conditions):
            with torch.device("meta"):  # the layers' kinds, no weights
                for n_layer in cfg.layers:
                    check_fits(make_model(replace(cfg, device="cpu"), n_layer, seed=0),
                               cfg.discovery_settings(), cfg.batch_size)
        manifest.claim(self.out, EXPERIMENT, cfg.identity())
        keys = [(c, l, n, s) for c in cfg.conditions for l in cfg.layers
                for n in cfg.n_disambiguation for s in cfg.seeds]
        self.sweep = Sweep(keys, KEY_FIELDS, RECORD_FIELDS, lambda key: self.run_path(*key))
        self._bases: dict[int, nn.Module] = {}
        self._subnetworks: dict[tuple, tuple] = {}

    def _check_writable(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.out, delete=True)
            probe.close()
        except OSError as err:
            raise ValueError(f"output directory {self.out} is not writable ({err})") from err

    def _batches(self, rows, batch_size: int, seed: int = 0, shuffle: bool = False):
        return TensorBatches(rows.to(self.cfg.device), batch_size=batch_size, shuffle=shuffle,
                             seed=seed)

    def _eval(self, rows):
        return self._batches(rows, EVAL_BATCH)

    def base_model(self, n_layer: int) -> nn.Module:
        """Trained (once, by one process) on the base computation until test
        accuracy reaches the target or the epoch cap."""
        cfg = self.cfg

        def load(path):
            return load_model_file(make_model(cfg, n_layer, seed=0), path, cfg.device)

        def build(path):
            train_rows = A.base_training_set(cfg.base, self.vocab, cfg.base_fraction, seed=0)
            test_rows = A.random_set(cfg.base, self.vocab, cfg.base_test_samples, seed=1)
            model = make_model(cfg, n_layer, seed=0)
            optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.base_lr, betas=(0.9, 0.999))
            start = time.time()
            log = EpochLog(path.parent / "train.csv",
                           ["epoch", "train_loss", "eval_loss", "eval_accuracy"])
            final = train(model, optimizer, self.task,
                          self._batches(train_rows, cfg.batch_size, seed=0, shuffle=True),
                          cfg.base_max_epochs, seed=0, eval_data=self._eval(test_rows), log=log,
                          after_epoch=lambda e, m: m.accuracy >= cfg.base_target_accuracy,
                          progress=f"base L{n_layer} ({cfg.base})" if self.progress else None)
            log.close()
            save_model_file(model, path)
            return model, {"computation": cfg.base, "layers": n_layer,
                           "test_accuracy": final.accuracy, "seconds": time.time() - start,
                           "config": asdict(cfg), "versions": software_versions("transformers")}

        return cached_stage(self.out / "base" / f"L{n_layer}" / "model.safetensors", load, build)


    def _discovery_batches(self, rows, batch_size: int, shuffle: bool, seed: int,
                           pair_seed: int):
        """In an order drawn from the discovery's ``seed``; a corrupted
        ablation reads each batch with its partners' rows."""
        if self.cfg.discovery.ablation != "corrupted":
            return self._batches(rows, batch_size, seed=seed, shuffle=shuffle)
        return PairedTensorBatches(rows.to(self.cfg.device), batch_size=batch_size,
                                   shuffle=shuffle, seed=seed, pair_seed=pair_seed)

    def _discovery_eval_rows(self):
        return A.random_set(self.cfg.subtask, self.vocab, DISCOVERY_EVAL_SAMPLES, seed=3)

    def _discovered(self, n_layer: int, base: nn.Module, settings: Discovery, path: Path,
                    log_dir: Path) -> tuple[sf.Subnetwork, dict]:
        """Discovered in the base model on the subtask as ``settings`` say and
        saved at ``path``; the lottery ticket compares the base model with its
        initialisation."""
        cfg = self.cfg
        sub_rows = A.random_set(cfg.subtask, self.vocab, cfg.subtask_samples, seed=2)
        start = time.time()
        initial = (make_model(cfg, n_layer, seed=0) if settings.method == "lottery_ticket"
                   else None)
        result = discover(base, self.task,
                          self._discovery_batches(sub_rows, cfg.batch_size, True, settings.seed,
                                                  settings.seed),
                          self._discovery_batches(self._discovery_eval_rows(), EVAL_BATCH,
                                                  False, 0, settings.seed + 1),
                          settings,
                          DiscoveryHooks(log_dir=log_dir, progress=self.progress,
                                         compile_model=apply_speed_options(
                                             cfg.kernels, cfg.compile, cfg.device)),
                          pretrained=initial)
        result.subnetwork.metadata.update(base=cfg.base, subtask=cfg.subtask, layers=n_layer,
                                          seed=settings.seed)
        result.subnetwork.save(path)
        return result.subnetwork, {
            "layers": n_layer, "subtask": cfg.subtask, "base": cfg.base, "seed": settings.seed,
            "subtask_accuracy": result.accuracy, "density": result.density,
            "l0_lambda": result.l0_lambda, "layer_density": result.layer_density,
            "candidates": result.candidates, "seconds": time.time() - start}

    def subnetwork(self, n_layer: int, base: nn.Module) -> sf.Subnetwork:
        """The one discovery (cfg.discovery, its --seed)."""
        return cached_stage(
            self.out / "subnetworks" / f"L{n_layer}.safetensors", sf.Subnetwork.load,
            lambda path: self._discovered(n_layer, base, self.cfg.discovery_settings(), path,
                                          path.parent / f"L{n_layer}-logs"))

    def seeded_discovery(self, n_layer: int, base: nn.Module) -> SeededDiscovery:
        """The discovery once per --discovery-seeds seed, and their stability."""
        settings, eval_rows = self.cfg.discovery_settings(), self._discovery_eval_rows()

        def accuracy_alone(sub: sf.Subnetwork) -> float:
            return self.task.evaluate(sub.ablate(copy.deepcopy(base), "keep"),
                                      self._eval(eval_rows)).accuracy

        return SeededDiscovery(
            self.out / "subnetworks" / f"L{n_layer}", self.cfg.repeated_discovery.discovery_seeds,
            lambda seed, path, log_dir: self._discovered(n_layer, base,
                                                         replace(settings, seed=seed), path,
                                                         log_dir),
            accuracy_alone)

    def grid(self) -> list[tuple[str, int, int, int]]:
        return list(self.sweep.keys)

    def run_path(self, condition: str, n_layer: int, n: int, seed: int) -> Path:
        return self.out / "runs" / condition / f"L{n_layer}-N{n}-s{seed}.json"

    def finished(self, condition: str, n_layer: int, n: int, seed: int) -> bool:
        return self.sweep.finished((condition, n_layer, n, seed))

    def _stages_for(self, condition: str, n_layer: int, seed: int) -> tuple:
        """(base model, subnetwork, its label) as ``condition`` reads them for
        the run with ``seed`` (None where it does not: scratch needs none),
        each built or loaded once."""
        if CONDITIONS[condition].choice == "none":
            return None, None, None
        if n_layer not in self._bases:
            self._bases[n_layer] = self.base_model(n_layer)
        base = self._bases[n_layer]
        if not needs_subnetwork([condition]):
            return base, None, None
        choice = self.cfg.repeated_discovery
        key = (n_layer, choice.label_for(seed) if choice.repeated else None)
        if key not in self._subnetworks:
            self._subnetworks[key] = one_or_seeded(
                choice, seed, lambda: self.subnetwork(n_layer, base),
                lambda: self.seeded_discovery(n_layer, base))
        return (base, *self._subnetworks[key])

    def transfer_run(self, condition: str, n_layer: int, n: int, seed: int, base: nn.Module,
                     sub: Optional[sf.Subnetwork], sub_label: Optional[str] = None) -> dict:
        """One transfer run; ``sub_label`` names which of several discovery
        seeds' subnetworks ``sub`` is (--discovery-seeds)."""
        cfg = self.cfg
        sets = A.transfer_sets(cfg.target, self.vocab, n, seed=seed)
        model = make_model(cfg, n_layer, seed=1000 + seed)
        frozen, frozen_fraction = transfer_condition(condition, sub, base, model, seed, cfg.reinit)
        optimizer = sf.MaskedAdamW(model.parameters(), frozen=frozen, lr=cfg.transfer_lr,
                                   weight_decay=0.0)
        best = {"eval_accuracy": -1.0}
        start = time.time()
        test_data = self._eval(sets["test"])

        def keep_best(epoch, metrics):
            if metrics.accuracy > best["eval_accuracy"]:
                test = self.task.evaluate(model, test_data)
                best.update(epoch=epoch, eval_accuracy=metrics.accuracy,
                            test_accuracy=test.accuracy, test_loss=test.loss)
            return False

        log = EpochLog(self.run_path(condition, n_layer, n, seed).with_suffix(".csv"),
                       ["epoch", "train_loss", "eval_loss", "eval_accuracy"])
        train(model, optimizer, self.task,
              self._batches(sets["train"], cfg.transfer_batch_size, seed=seed, shuffle=True),
              cfg.transfer_epochs, seed=seed, eval_data=self._eval(sets["eval"]),
              after_epoch=keep_best, log=log)
        log.close()
        return {"condition": condition, "layers": n_layer, "n_disambiguation": n, "seed": seed,
                "frozen_fraction": frozen_fraction, "subnetwork": sub_label, **best,
                "seconds": time.time() - start,
                "config": asdict(cfg), "versions": software_versions("transformers")}

    def run(self, shard: tuple[int, int] = (0, 1)) -> SweepResult:
        """Run this shard's part of the grid (see engine.sweep)."""
        def execute(key):
            base, sub, label = self._stages_for(key[0], key[1], key[3])
            return self.transfer_run(*key, base, sub, label)

        return self.sweep.run(execute, shard, progress=self.progress)
