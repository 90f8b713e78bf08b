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

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import subind_fast as sf
from subind_fast.transfer import REINIT_POLICIES

from . import arithmetic as A
from .discovery import PAPER_LAMBDAS, discover
from .expressions import parse
from .training import EpochLog, LastTokenTask, train

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
        for name in ("base", "subtask", "target"):
            parse(getattr(self, name))  # raises ExpressionError naming the symbol
        vocab = A.Vocabulary(self.n_numbers, self.p)
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"unknown conditions {unknown}; choose from {sorted(CONDITIONS)}")
        too_many = [n for n in self.n_disambiguation if not 0 <= n <= vocab.n_pairs]
        if too_many:
            raise ValueError(f"n_disambiguation {too_many} outside 0..{vocab.n_pairs} "
                             f"(the number of (a, b) pairs)")
        if any(l < 1 for l in self.layers) or not self.layers:
            raise ValueError(f"layers must be positive, got {self.layers}")
        if self.reinit not in REINIT_POLICIES:
            raise ValueError(f"reinit must be 'all' or 'masked', got {self.reinit!r}")
        return self


PRESETS = {
    # end-to-end in well under a minute on 2 CPU cores (tests)
    "smoke": dict(n_numbers=50, layers=[1], n_disambiguation=[0, 50], seeds=[0],
                  conditions=["subtask_induction", "scratch", "random"], n_embd=32, n_inner=64,
                  base_fraction=0.5, base_test_samples=500, base_max_epochs=15,
                  subtask_samples=1000, discovery_epochs=3, lambdas=[1e-7], transfer_epochs=5,
                  batch_size=128, base_lr=3e-3),
    # the demo: the paper's setup on numbers 0..199 (40,000 pairs instead of 10⁶), a 2-layer
    # model and a reduced grid; ≤ 15 min on 2 CPU cores
    "quick": dict(n_numbers=200, layers=[2], n_disambiguation=[10, 30, 100, 300, 1000, 3000],
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
def atomic_write_json(path: Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=2, default=str))


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
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        # GPT-2 ties lm_head to wte; safetensors stores shared storage once.
        state.pop("lm_head.weight", None)
        save_file(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_model(cfg: ArithmeticConfig, n_layer: int, path: Path) -> nn.Module:
    from safetensors.torch import load_file

    model = make_model(cfg, n_layer, seed=0)
    missing, unexpected = model.load_state_dict(load_file(str(path)), strict=False)
    if unexpected or any(k != "lm_head.weight" for k in missing):
        raise ValueError(f"{path}: checkpoint does not match the model ({missing}, {unexpected})")
    model.tie_weights()
    return model


# ------------------------------------------------------------------ stages
class ArithmeticExperiment:
    def __init__(self, cfg: ArithmeticConfig, out: Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg.validate(), Path(out), progress
        self.vocab = A.Vocabulary(cfg.n_numbers, cfg.p)
        self.task = LastTokenTask()
        self._check_writable()

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
        accuracy reaches the target or the epoch cap."""
        cfg, path = self.cfg, self.out / "base" / f"L{n_layer}" / "model.safetensors"
        meta_path = path.with_suffix(".json")
        if path.exists() and meta_path.exists():
            return _load_model(cfg, n_layer, path)
        train_rows = self._rows(A.base_training_set(cfg.base, self.vocab, cfg.base_fraction, seed=0))
        test_rows = self._rows(A.random_set(cfg.base, self.vocab, cfg.base_test_samples, seed=1))
        model = make_model(cfg, n_layer, seed=0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.base_lr, betas=(0.9, 0.999))
        start = time.time()
        log = EpochLog(path.parent / "train.csv", ["epoch", "train_loss", "eval_loss", "eval_accuracy"])
        final = train(model, optimizer, self.task, train_rows, cfg.base_max_epochs, cfg.batch_size,
                      seed=0, eval_rows=test_rows, log=log,
                      after_epoch=lambda e, m: m.accuracy >= cfg.base_target_accuracy,
                      progress=f"base L{n_layer} ({cfg.base})" if self.progress else None)
        log.close()
        _save_model(model, path)
        atomic_write_json(meta_path, {"computation": cfg.base, "layers": n_layer,
                                      "test_accuracy": final.accuracy, "seconds": time.time() - start,
                                      "config": asdict(cfg), "versions": versions()})
        return model

    def subnetwork(self, n_layer: int, base: nn.Module) -> sf.Subnetwork:
        cfg = self.cfg
        path = self.out / "subnetworks" / f"L{n_layer}.safetensors"
        if path.exists() and path.with_suffix(".json").exists():
            return sf.Subnetwork.load(path)
        sub_rows = self._rows(A.random_set(cfg.subtask, self.vocab, cfg.subtask_samples, seed=2))
        eval_rows = self._rows(A.random_set(cfg.subtask, self.vocab, 2000, seed=3))
        start = time.time()
        result = discover(base, sub_rows, eval_rows, lambdas=cfg.lambdas, epochs=cfg.discovery_epochs,
                          beta_final=cfg.beta_final, mask_lr=cfg.mask_lr, batch_size=cfg.batch_size,
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

    def run(self, shard: tuple[int, int] = (0, 1)) -> list[Path]:
        """Run this shard's part of the grid; returns the records written now."""
        from tqdm.auto import tqdm

        i, k = shard
        mine = self.grid()[i::k]
        todo = [r for r in mine if not self.run_path(*r).exists()]
        written = []
        prepared: dict[int, tuple] = {}
        for condition, n_layer, n, seed in tqdm(todo, desc="transfer runs",
                                                disable=not self.progress):
            if n_layer not in prepared:
                base = self.base_model(n_layer)
                needs_sub = any(CONDITIONS[c][0] in ("discovered", "random", "complement")
                                for c in self.cfg.conditions)
                prepared[n_layer] = (base, self.subnetwork(n_layer, base) if needs_sub else None)
            base, sub = prepared[n_layer]
            record = self.transfer_run(condition, n_layer, n, seed, base, sub)
            path = self.run_path(condition, n_layer, n, seed)
            atomic_write_json(path, record)
            written.append(path)
        return written


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
