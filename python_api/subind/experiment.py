"""The arithmetic Subtask Induction experiment (paper §4, App. B) as a
resumable, shardable sweep.

Pipeline, all under one output directory:

    base/L{n}/model.safetensors        the model trained on the base computation
    subnetworks/L{n}.safetensors       the subnetwork discovered for the subtask (+ .json)
    runs/{condition}/L{n}-N{N}-s{seed}.json   one record per transfer run

Base models and subnetworks are reused when present; a run whose record
exists is skipped, and records are written atomically, so an interrupted
sweep resumes where it stopped and never duplicates a run.  ``shard=(i, k)``
runs every k-th run of the sorted grid starting at i, so k machines (a SLURM
array) share one grid over a shared directory.
"""
from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import subind_fast as sf
from subind_fast.transfer import REINIT_POLICIES

from . import arithmetic as A
from .engine import manifest, records
from .engine import validation as check
from .engine.files import atomic_write, atomic_write_json, locked, move_aside
from .discovery import PAPER_LAMBDAS, discover
from .expressions import parse
from .training import EpochLog, LastTokenTask, train

# Which runs make up the sweep; every record is keyed by one point of this grid.
GRID_FIELDS = ("conditions", "layers", "n_disambiguation", "seeds")
RECORD_FIELDS = ("condition", "layers", "n_disambiguation", "seed", "test_accuracy",
                 "eval_accuracy", "epoch", "config")

CONDITIONS = {
    # name: (how the subnetwork is chosen, frozen?)
    "subtask_induction": ("discovered", True),
    "scratch": ("none", False),
    "random": ("random", True),
    "complement": ("complement", True),
    "full_model": ("all", False),
    "subtask_induction_unfrozen": ("discovered", False),
    "random_unfrozen": ("random", False),
}


@dataclass
class ArithmeticConfig:
    base: str = "a+a*b"
    subtask: str = "a*b"
    target: str = "a^2+a*b"
    p: int = A.DEFAULT_P
    n_numbers: int = A.DEFAULT_NUMBERS
    layers: list = field(default_factory=lambda: [2, 4, 6, 8, 10, 12])
    n_disambiguation: list = field(default_factory=lambda: [
        int(round(10 ** (1 + 3 * i / 15))) for i in range(16)])  # 16 values, 10 … 10⁴
    conditions: list = field(default_factory=lambda: ["subtask_induction", "scratch", "random",
                                                      "complement", "full_model"])
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    n_embd: int = 128
    n_head: int = 4
    n_inner: int = 512
    base_fraction: float = 0.2
    base_test_samples: int = 20_000
    base_lr: float = 5e-4
    base_max_epochs: int = 500
    base_target_accuracy: float = 0.999
    subtask_samples: int = 50_000
    discovery_epochs: int = 50
    lambdas: list = field(default_factory=lambda: list(PAPER_LAMBDAS))
    beta_final: float = 100.0
    mask_lr: float = 1e-3
    transfer_epochs: int = 100
    transfer_lr: float = 2e-4
    batch_size: int = 512
    transfer_batch_size: int = 32  # the transfer sets are small: keep enough steps per epoch
    reinit: str = "all"
    device: str = "cpu"

    def validate(self) -> "ArithmeticConfig":
        """Every field checked before any training (errors name the field)."""
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
                     "subtask_samples", "discovery_epochs", "transfer_epochs", "batch_size",
                     "transfer_batch_size"):
            check.positive_int(name, getattr(self, name))
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for name in ("base_lr", "mask_lr", "transfer_lr", "beta_final"):
            check.positive(name, getattr(self, name))
        check.in_range("base_fraction", self.base_fraction, 0, 1, low_open=True)
        check.in_range("base_target_accuracy", self.base_target_accuracy, 0, 1)
        if not self.lambdas:
            raise ValueError("lambdas must name at least one L0 penalty")
        for lam in self.lambdas:
            check.positive("lambdas", lam)
        if self.reinit not in REINIT_POLICIES:
            raise ValueError(f"reinit must be 'all' or 'masked', got {self.reinit!r}")
        check.device(self.device)
        return self

    def identity(self) -> dict:
        """The fields that define the experiment (the results-directory
        manifest): all but the grid axes and the device."""
        return {k: v for k, v in asdict(self).items() if k not in GRID_FIELDS + ("device",)}


PRESETS = {
    # end-to-end in well under a minute on 2 CPU cores (tests)
    "smoke": dict(n_numbers=50, layers=[1], n_disambiguation=[0, 50], seeds=[0],
                  conditions=["subtask_induction", "scratch", "random"], n_embd=32, n_inner=64,
                  base_fraction=0.5, base_test_samples=500, base_max_epochs=15,
                  subtask_samples=1000, discovery_epochs=3, lambdas=[1e-7], transfer_epochs=5,
                  batch_size=128, base_lr=3e-3),
    # the demo: the paper's numbers 0..999 (10⁶ pairs, so N = 1000 is the paper's 0.1 %), a
    # 2-layer model and a reduced grid; ≤ 15 min on 2 CPU cores
    "quick": dict(n_numbers=1000, layers=[2], n_disambiguation=[10, 30, 100, 300, 1000, 3000],
                  seeds=[0, 1], conditions=["subtask_induction", "scratch", "random"],
                  base_lr=1e-3, base_max_epochs=80, base_test_samples=5000, subtask_samples=10_000,
                  discovery_epochs=15, lambdas=[1e-7], transfer_epochs=40, transfer_lr=1e-3,
                  batch_size=256, reinit="masked"),
    # the paper's full grid (a GPU job)
    "paper": dict(),
}


def config_for(preset: str, **overrides) -> ArithmeticConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return ArithmeticConfig(**values).validate()


# ------------------------------------------------------------------ helpers
def parse_shard(spec: Optional[str]) -> tuple[int, int]:
    """'i/k' → (i, k) with 0 ≤ i < k."""
    if spec is None:
        return 0, 1
    try:
        i, k = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/k (e.g. 0/4), got {spec!r}") from None
    if k < 1 or not 0 <= i < k:
        raise ValueError(f"--shard {spec!r}: need 0 <= i < k")
    return i, k


def versions() -> dict:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "subind_fast": sf.__version__, "python": platform.python_version()}


def make_model(cfg: ArithmeticConfig, n_layer: int, seed: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = A.Vocabulary(cfg.n_numbers, cfg.p)
    config = GPT2Config(vocab_size=vocab.size, n_positions=4, n_embd=cfg.n_embd,
                        n_layer=n_layer, n_head=cfg.n_head, n_inner=cfg.n_inner,
                        bos_token_id=vocab.sep, eos_token_id=vocab.sep)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model.to(cfg.device)


def _save_model(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    atomic_write(path, lambda tmp: save_model(model, str(tmp)))  # ties stored once


def _load_model(cfg: ArithmeticConfig, n_layer: int, path: Path) -> nn.Module:
    from safetensors.torch import load_model

    model = make_model(cfg, n_layer, seed=0)
    load_model(model, str(path), device=cfg.device)
    return model


# ------------------------------------------------------------------ stages
class ArithmeticExperiment:
    def __init__(self, cfg: ArithmeticConfig, out: Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg.validate(), Path(out), progress
        self.vocab = A.Vocabulary(cfg.n_numbers, cfg.p)
        self.task = LastTokenTask()
        self._check_writable()
        manifest.claim(self.out, "arithmetic", cfg.identity())

    def _check_writable(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.out, delete=True)
            probe.close()
        except OSError as err:
            raise ValueError(f"output directory {self.out} is not writable ({err})") from err

    def _rows(self, rows):
        return rows.to(self.cfg.device)

    def base_model(self, n_layer: int) -> nn.Module:
        """Train (or load) the model on the base computation until test
        accuracy reaches the target or the epoch cap.  One process trains it
        (the others wait for it); a damaged checkpoint is moved aside and redone."""
        cfg, path = self.cfg, self.out / "base" / f"L{n_layer}" / "model.safetensors"
        meta_path = path.with_suffix(".json")
        with locked(path):
            if path.exists() and meta_path.exists():
                try:
                    return _load_model(cfg, n_layer, path)
                except Exception as err:  # safetensors raises several types for damaged files
                    move_aside(path, f"unreadable base model ({err})")
            train_rows = self._rows(A.base_training_set(cfg.base, self.vocab, cfg.base_fraction,
                                                        seed=0))
            test_rows = self._rows(A.random_set(cfg.base, self.vocab, cfg.base_test_samples, seed=1))
            model = make_model(cfg, n_layer, seed=0)
            optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.base_lr, betas=(0.9, 0.999))
            start = time.time()
            log = EpochLog(path.parent / "train.csv",
                           ["epoch", "train_loss", "eval_loss", "eval_accuracy"])
            final = train(model, optimizer, self.task, train_rows, cfg.base_max_epochs,
                          cfg.batch_size, seed=0, eval_rows=test_rows, log=log,
                          after_epoch=lambda e, m: m.accuracy >= cfg.base_target_accuracy,
                          progress=f"base L{n_layer} ({cfg.base})" if self.progress else None)
            log.close()
            _save_model(model, path)
            atomic_write_json(meta_path, {"computation": cfg.base, "layers": n_layer,
                                          "test_accuracy": final.accuracy,
                                          "seconds": time.time() - start, "config": asdict(cfg),
                                          "versions": versions()})
            return model

    def subnetwork(self, n_layer: int, base: nn.Module) -> sf.Subnetwork:
        cfg = self.cfg
        path = self.out / "subnetworks" / f"L{n_layer}.safetensors"
        with locked(path):
            if path.exists() and path.with_suffix(".json").exists():
                try:
                    return sf.Subnetwork.load(path)
                except ValueError as err:
                    move_aside(path, str(err))
            sub_rows = self._rows(A.random_set(cfg.subtask, self.vocab, cfg.subtask_samples,
                                               seed=2))
            eval_rows = self._rows(A.random_set(cfg.subtask, self.vocab, 2000, seed=3))
            start = time.time()
            result = discover(base, sub_rows, eval_rows, lambdas=cfg.lambdas,
                              epochs=cfg.discovery_epochs, beta_final=cfg.beta_final,
                              mask_lr=cfg.mask_lr, batch_size=cfg.batch_size,
                              log_dir=path.parent / f"L{n_layer}-logs", progress=self.progress)
            result.subnetwork.metadata.update(base=cfg.base, subtask=cfg.subtask, layers=n_layer)
            result.subnetwork.save(path)
            atomic_write_json(path.with_suffix(".json"), {
                "layers": n_layer, "subtask": cfg.subtask, "base": cfg.base,
                "subtask_accuracy": result.accuracy, "density": result.density,
                "l0_lambda": result.l0_lambda, "layer_density": result.layer_density,
                "candidates": result.candidates, "seconds": time.time() - start})
            return result.subnetwork

    def grid(self) -> list[tuple[str, int, int, int]]:
        cfg = self.cfg
        return sorted((c, l, n, s) for c in cfg.conditions for l in cfg.layers
                      for n in cfg.n_disambiguation for s in cfg.seeds)

    def run_path(self, condition: str, n_layer: int, n: int, seed: int) -> Path:
        return self.out / "runs" / condition / f"L{n_layer}-N{n}-s{seed}.json"

    def finished(self, condition: str, n_layer: int, n: int, seed: int) -> bool:
        """Whether a valid record exists (a damaged one is moved aside)."""
        expected = {"condition": condition, "layers": n_layer, "n_disambiguation": n, "seed": seed}
        return records.read(self.run_path(condition, n_layer, n, seed), RECORD_FIELDS,
                            expected) is not None

    def transfer_run(self, condition: str, n_layer: int, n: int, seed: int, base: nn.Module,
                     sub: Optional[sf.Subnetwork]) -> dict:
        cfg = self.cfg
        choice, freeze = CONDITIONS[condition]
        sets = {k: self._rows(v) for k, v in A.transfer_sets(cfg.target, self.vocab, n, seed=seed).items()}
        model = make_model(cfg, n_layer, seed=1000 + seed)
        if choice == "discovered":
            chosen = sub
        elif choice == "random":
            chosen = sub.random_like(seed)
        elif choice == "complement":
            chosen = sub.complement_sample(seed)
        elif choice == "all":
            chosen = sf.Subnetwork.all_of(base)
        else:
            chosen = None
        frozen = {}
        if chosen is not None:  # a Subnetwork has __len__: test for None, not truthiness
            frozen = sf.transfer(chosen, base, model, reinit=cfg.reinit, freeze=freeze)
        optimizer = sf.MaskedAdamW(model.parameters(), frozen=frozen, lr=cfg.transfer_lr,
                                   weight_decay=0.0)
        best = {"eval_accuracy": -1.0}
        start = time.time()

        def keep_best(epoch, metrics):
            if metrics.accuracy > best["eval_accuracy"]:
                test = self.task.evaluate(model, sets["test"])
                best.update(epoch=epoch, eval_accuracy=metrics.accuracy,
                            test_accuracy=test.accuracy, test_loss=test.loss)
            return False

        path = self.run_path(condition, n_layer, n, seed)
        log = EpochLog(path.with_suffix(".csv"), ["epoch", "train_loss", "eval_loss", "eval_accuracy"])
        train(model, optimizer, self.task, sets["train"], cfg.transfer_epochs,
              cfg.transfer_batch_size, seed=seed, eval_rows=sets["eval"], after_epoch=keep_best,
              log=log)
        log.close()
        return {"condition": condition, "layers": n_layer, "n_disambiguation": n, "seed": seed,
                "frozen_fraction": (chosen.density() if chosen is not None and freeze else 0.0),
                **{k: v for k, v in best.items()}, "seconds": time.time() - start,
                "config": asdict(cfg), "versions": versions()}

    def run(self, shard: tuple[int, int] = (0, 1)) -> SweepResult:
        """Run this shard's part of the grid.  A run another process is
        running now (its lock is held) is left to it."""
        from tqdm.auto import tqdm

        i, k = shard
        mine = self.grid()[i::k]
        todo = [r for r in mine if not self.finished(*r)]
        result = SweepResult(present=len(mine) - len(todo))
        prepared: dict[int, tuple] = {}
        for condition, n_layer, n, seed in tqdm(todo, desc="transfer runs",
                                                disable=not self.progress):
            path = self.run_path(condition, n_layer, n, seed)
            with locked(path, wait=False) as claimed:
                if not claimed:
                    result.elsewhere.append(path)
                    continue
                if self.finished(condition, n_layer, n, seed):  # finished meanwhile
                    result.present += 1
                    continue
                if n_layer not in prepared:
                    base = self.base_model(n_layer)
                    needs_sub = any(CONDITIONS[c][0] in ("discovered", "random", "complement")
                                    for c in self.cfg.conditions)
                    prepared[n_layer] = (base, self.subnetwork(n_layer, base) if needs_sub else None)
                base, sub = prepared[n_layer]
                record = self.transfer_run(condition, n_layer, n, seed, base, sub)
                atomic_write_json(path, record)
                result.written.append(path)
        return result


@dataclass
class SweepResult:
    """What one call of ``run`` did."""

    present: int = 0                                  # valid records found, not redone
    written: list = field(default_factory=list)       # records written now
    elsewhere: list = field(default_factory=list)     # runs another process holds

    def __len__(self) -> int:
        return len(self.written)

    def __iter__(self):
        return iter(self.written)

    def summary(self) -> str:
        return (f"{len(self.written)} runs done now, {self.present} already present"
                + (f", {len(self.elsewhere)} running in another process" if self.elsewhere else ""))
