"""Subnetwork discovery (paper §3.1, Appendix A, Algorithm 1): train
continuous-sparsification masks on a subtask with the trained weights frozen,
β annealed exponentially from 1 to β_final, an L0 penalty λ·Σσ(βs), and keep
the hard mask 1[s > 0].  Model-agnostic: the task object supplies the loss and
the accuracy, so the vision experiment reuses it."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

import subind_fast as sf

from .training import EpochLog, LastTokenTask, train

PAPER_LAMBDAS = (1e-7, 5e-7, 1e-8)
GPT2_MASKED_LAYERS = ("transformer.h.*.attn.*", "transformer.h.*.mlp.*")


@dataclass
class DiscoveryResult:
    subnetwork: sf.Subnetwork
    accuracy: float            # subtask accuracy of the hard-masked model (evaluation set)
    density: float             # kept fraction over the masked weights
    l0_lambda: float
    layer_density: dict = field(default_factory=dict)
    candidates: list = field(default_factory=list)  # (λ, accuracy, density) for every λ tried


def _hard_density(layers) -> float:
    kept = sum(int((l.logits > 0).sum()) for l in layers)
    return kept / max(1, sum(l.logits.numel() for l in layers))


def beta_schedule(epoch: int, epochs: int, beta_final: float) -> float:
    """Algorithm 1: β starts at 1 and grows by β_final^(1/n) after each epoch."""
    return beta_final ** (epoch / epochs)


def discover(model: nn.Module, train_rows: Tensor, eval_rows: Tensor, *,
             task: Optional[LastTokenTask] = None, include: Sequence[str] = GPT2_MASKED_LAYERS,
             exclude: Optional[Sequence[str]] = None, lambdas: Sequence[float] = PAPER_LAMBDAS,
             epochs: int = 50, beta_final: float = 100.0, mask_lr: float = 1e-3,
             mask_init: float = sf.nn.DEFAULT_MASK_INIT, batch_size: int = 512, seed: int = 0,
             log_dir: Optional[Path] = None, progress: bool = False) -> DiscoveryResult:
    """Find the subnetwork of ``model`` that performs the task of ``train_rows``.

    One mask per λ; the result keeps the λ whose hard mask is most accurate on
    ``eval_rows``, breaking ties (within 1e-3) by sparsity.  ``model`` itself is
    not modified."""
    task = task or LastTokenTask()
    if not lambdas:
        raise ValueError("lambdas must name at least one L0 penalty")
    if epochs < 1 or beta_final <= 0 or mask_lr <= 0:
        raise ValueError(f"need epochs >= 1, beta_final > 0, mask_lr > 0 (got {epochs}, "
                         f"{beta_final}, {mask_lr})")
    candidates = []
    for lam in lambdas:
        probe = copy.deepcopy(model)
        layers = sf.mask_model(probe, include=include, exclude=exclude, init=mask_init)
        optimizer = torch.optim.Adam([l.logits for l in layers.values()], lr=mask_lr)
        log = EpochLog(log_dir / f"discovery-lambda{lam:g}.csv" if log_dir else None,
                       ["epoch", "beta", "train_loss", "eval_loss", "eval_accuracy", "density"])
        train(probe, optimizer, task, train_rows, epochs, batch_size, seed, eval_rows,
              extra_loss=lambda: lam * sf.l0_penalty(probe),
              before_epoch=lambda e: sf.set_beta(probe, beta_schedule(e, epochs, beta_final)),
              log=log, progress=f"discover λ={lam:g}" if progress else None,
              log_extra=lambda: {"beta": float(next(iter(layers.values())).beta),
                                 "density": _hard_density(layers.values())})
        log.close()
        probe.eval()  # hard masks
        accuracy = task.evaluate(probe, eval_rows).accuracy
        sub = sf.Subnetwork.from_model(probe, metadata={
            "l0_lambda": lam, "epochs": epochs, "beta_final": beta_final, "mask_lr": mask_lr,
            "mask_init": mask_init, "subtask_accuracy": accuracy})
        candidates.append((lam, accuracy, sub.density(), sub))
    best = max(candidates, key=lambda c: (round(c[1], 3), -c[2]))
    lam, accuracy, density, sub = best
    return DiscoveryResult(sub, accuracy, density, lam, sub.layer_density(),
                           [(c[0], c[1], c[2]) for c in candidates])
