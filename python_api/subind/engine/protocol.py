"""The Subtask Induction protocol (paper §3), independent of any model or data.

Discovery (§3.1, Appendix A, Algorithm 1): masks on the chosen layers of a
trained model whose weights stay frozen; β annealed exponentially from 1 to
β_final over the epochs; an L0 penalty λ·Σσ(βs); the hard mask 1[s > 0] at
test time.  Several λ values are searched with one masked copy of the model
(its logits reset between them), and the most accurate hard mask wins, ties
(within 1e-3) going to the sparser one.

Transfer (§3.2) under the paper's conditions: the discovered subnetwork, none
(scratch), a random subnetwork of the same per-layer size (§4.3), a sample of
the complement (App. B.2), the whole model (full-model transfer), and the
unfrozen variants (App. B.3).
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Iterable, Literal, Optional, Protocol

import torch
import tyro
from torch import nn

import subind_fast as sf

from . import validation as check
from .options import Floats, Repeated, flag
from .ablation import OBJECTIVES, ablating, recording_partners, start_means
from .target_density import DensityTarget
from .training import EpochLog, Task, train

PAPER_LAMBDAS = (1e-7, 5e-7, 1e-8)


class EmptySubnetworkWarning(UserWarning):
    """A discovery that kept no weight: its transfer would copy nothing."""


@dataclass
class DiscoveryResult:
    subnetwork: sf.Subnetwork
    accuracy: float            # task accuracy of the hard-masked model (evaluation data)
    density: float             # kept fraction over the masked weights
    l0_lambda: float
    layer_density: dict = field(default_factory=dict)
    candidates: list = field(default_factory=list)  # (λ, accuracy, density) for every λ tried


def beta_schedule(epoch: int, epochs: int, beta_final: float, beta_start: float = 1.0) -> float:
    """Algorithm 1: β starts at 1 and grows by β_final^(1/n) after each epoch
    (from ``beta_start`` to β_final geometrically in general)."""
    return beta_start * (beta_final / beta_start) ** (epoch / epochs)


def method_beta(method: "sf.nn.MaskMethod", epoch: int, epochs: int, beta_final: float,
                anneal_temperature: bool) -> float:
    """β (the inverse temperature) of an epoch: continuous sparsification anneals
    1 → β_final (the paper); the sampled methods keep their default 1/τ, or
    anneal it to β_final with ``anneal_temperature``."""
    from subind_fast.nn.methods import DEFAULT_BETA

    start = DEFAULT_BETA[method.name]
    if method.name == "continuous" or anneal_temperature:
        return beta_schedule(epoch, epochs, beta_final, start)
    return start


def _mask_optimizer(name: str, logits: list, lr: float, fused: Optional[bool]
                    ) -> torch.optim.Optimizer:
    """Adam/AdamW over the logits; ``fused`` runs one fused kernel for every
    logits tensor (None: PyTorch's default implementation choice)."""
    if name not in ("adam", "adamw"):
        raise ValueError(f"mask optimizer must be 'adam' or 'adamw', got {name!r}")
    kind = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return kind(logits, lr=lr, fused=fused)


class DiscoveryState(Protocol):
    """Where a discovery run keeps its progress so a killed run resumes
    exactly (the CLI keeps it in distributed checkpoints,
    engine/dist_checkpoint.py): the logits and every other trained tensor of
    the model (a learned ablation's inputs), the optimizer, the global RNG,
    and ``extra`` — the other objects a run carries between epochs, each with
    ``state_dict()``/``load_state_dict()`` (a target density's multipliers
    and their optimizer)."""

    def finished(self, lam: float) -> Optional[tuple[float, sf.Subnetwork]]:
        """(accuracy, subnetwork) of a λ already done, else None."""

    def record(self, lam: float, accuracy: float, subnetwork: sf.Subnetwork) -> None: ...

    def restore(self, model: nn.Module, optimizer, lam: float, extra: dict) -> int:
        """Load λ's last checkpoint into model, optimizer and ``extra``; the next
        epoch (0: none)."""

    def save(self, model: nn.Module, optimizer, lam: float, epoch: int, extra: dict) -> None: ...


MASK_METHODS = (*sf.nn.METHODS, *sf.selection.METHODS)


@dataclass
class Discovery:
    """How a subnetwork is discovered: the settings it depends on besides the
    model and the data (`subind discover` takes them as options)."""
    lambdas: Floats = field(default_factory=lambda: list(PAPER_LAMBDAS))
    """L0 penalties to try"""
    epochs: Annotated[int, tyro.conf.arg(aliases=("--discovery-epochs",))] = 10
    """discovery epochs (β 1 → beta_final)"""
    beta_final: float = 100.0
    """β at the end of discovery"""
    mask_lr: float = 1e-3
    """learning rate of the mask logits"""
    mask_init: float = sf.nn.DEFAULT_MASK_INIT
    """initial mask logit (the paper: -0.1)"""
    optimizer: Annotated[Literal["adam", "adamw"],
                         tyro.conf.arg(aliases=("--mask-optimizer",))] = "adam"
    """optimizer of the mask logits"""
    seed: int = 0
    """seed of the initialisation and data order"""
    include: Repeated = field(default_factory=list)
    """glob on layer names to mask (repeatable; default: every maskable layer)"""
    exclude: Repeated = field(default_factory=list)
    """glob on layer names to leave unmasked (repeatable)"""
    method: Literal[MASK_METHODS] = "continuous"
    """how the mask is trained (continuous, hard_concrete, gumbel) or chosen without
    training (magnitude needs density, lottery_ticket also the model before fine-tuning)"""
    granularity: Literal[sf.nn.GRANULARITIES] = "weight"
    """one mask logit per weight, per output unit (a convolution's channel), or per
    attention head (output units elsewhere)"""
    n_samples: int = 1
    """mask samples per batch (hard_concrete, gumbel), each on a slice of the batch"""
    anneal_temperature: bool = False
    """sampled methods: anneal β = 1/τ to beta_final (default: fixed)"""
    density: Optional[float] = None
    """the fraction a selection method keeps"""
    target_density: Optional[float] = None
    """aim the trained masks at this fraction of the masked weights (a Lagrangian replaces
    the lambdas; the hard mask keeps exactly this many; engine/target_density.py)"""
    target_warmup: Optional[int] = None
    """epochs over which the target falls linearly from the masks' starting density
    (when left out: half the epochs)"""
    lagrangian_lr: float = 0.2
    """learning rate of the target's Lagrange multipliers (gradient ascent)"""
    ablation: Literal[sf.nn.ABLATIONS] = "zero"
    """what removed weights see instead of the input: zero, the mean input over the training
    set, a learned input (started at the mean), or the input of a paired corrupted batch
    (engine/ablation.py)"""
    objective: Literal[OBJECTIVES] = "labels"
    """train the masks on the labels (cross-entropy) or on KL to the unmasked model's output"""

    def validate(self, given: Iterable[str] = ()) -> "Discovery":
        """Every setting in range and consistent with the method, and none of
        ``given`` (the options the user set) one that the method would ignore;
        errors name the flag."""
        given = set(given)
        check.choices_of(self)  # a Discovery built in code meets no parser
        if self.selects:
            if self.granularity != "weight" or self.n_samples != 1:
                raise ValueError(f"--method {self.method} selects individual weights: leave "
                                 "--granularity and --n-samples out")
            if self.target_density is not None:
                raise ValueError(f"--target-density aims the trained masks at a size; --method "
                                 f"{self.method} selects --density itself")
            if self.ablation != "zero" or self.objective != "labels":
                raise ValueError(f"--method {self.method} trains nothing: --ablation and "
                                 "--objective are for the trained methods")
            ignored = [flag(name) for name in TRAINING_ONLY if name in given]
            if ignored:
                raise ValueError(f"--method {self.method} selects weights without training, so "
                                 f"{', '.join(ignored)} would be ignored; leave them out")
            if self.density is None:
                raise ValueError(f"--method {self.method} needs --density (the fraction to "
                                 "keep)")
            check.in_range("--density", self.density, 0, 1, low_open=True)
        else:
            method = self.mask_method()  # named errors
            if self.density is not None:
                raise ValueError(f"--density is for the selection methods (magnitude, "
                                 f"lottery_ticket); --method {self.method} finds its density "
                                 "through --lambdas")
            if self.anneal_temperature and not method.sampled:
                raise ValueError(f"--anneal-temperature is for the sampled methods "
                                 f"(hard_concrete, gumbel); --method {self.method} always "
                                 "anneals β")
        if self.target_density is not None:
            check.in_range("--target-density", self.target_density, 0, 1, low_open=True,
                           high_open=True)
            if "lambdas" in given:
                raise ValueError("--target-density replaces the λ search (a Lagrangian finds "
                                 "the penalty), so --lambdas would be ignored; leave it out")
            if self.target_warmup is not None and not 0 <= self.target_warmup < self.epochs:
                raise ValueError(f"--target-warmup must be in [0, --epochs) = [0, "
                                 f"{self.epochs}), got {self.target_warmup}")
            check.positive("--lagrangian-lr", self.lagrangian_lr)
        elif "target_warmup" in given or "lagrangian_lr" in given:
            raise ValueError("--target-warmup and --lagrangian-lr go with --target-density")
        elif not self.selects and not self.lambdas:
            raise ValueError("--lambdas must name at least one L0 penalty")
        check.unique_positive_numbers("--lambdas", self.lambdas)
        check.positive_int("--epochs", self.epochs)
        check.positive("--beta-final", self.beta_final)
        check.positive("--mask-lr", self.mask_lr)
        check.finite("--mask-init", self.mask_init)
        check.non_negative_int("--seed", self.seed)
        check.positive_int("--n-samples", self.n_samples)
        return self

    @property
    def selects(self) -> bool:
        """Whether the method chooses the subnetwork without training."""
        return self.method in sf.selection.METHODS

    def mask_method(self, generator: Optional[torch.Generator] = None) -> "sf.nn.MaskMethod":
        return sf.nn.MaskMethod(self.method, self.granularity, self.n_samples, generator)


# Settings only the trained methods read (a selection method would ignore them).
TRAINING_ONLY = ("lambdas", "epochs", "beta_final", "mask_lr", "mask_init", "optimizer",
                 "anneal_temperature", "target_warmup", "lagrangian_lr")


def check_fits(model: nn.Module, settings: Discovery, batch_per_rank: int) -> None:
    """The errors ``discover`` would raise on ``model`` once it masks it,
    raised before anything runs or is written: the layer patterns select
    maskable layers, the ablation suits the method and every selected layer,
    and a batch holds the mask samples."""
    include, exclude = settings.include or None, settings.exclude or None
    if settings.selects:
        sf.nn.select_modules(model, include, exclude)
        return
    method = settings.mask_method()
    sf.nn.check_ablation(model, settings.ablation, include, exclude, method)
    if settings.target_density is not None:
        modules, _, selected = sf.nn.select_modules(model, include, exclude)
        total = sum(p.numel() for key in selected for p in modules[key].parameters()
                    if p.dim() >= 2)
        if round(settings.target_density * total) < 1:
            raise ValueError(f"--target-density {settings.target_density:g} of the {total:,} "
                             f"masked weights keeps no weight; aim at {1 / total:.2g} or more")
    if method.sampled and method.n_samples > batch_per_rank:
        raise ValueError(f"--n-samples {method.n_samples} draws one mask sample per slice of "
                         f"each batch, but a rank's batch holds {batch_per_rank} samples; use "
                         "at most that many or a larger --batch-size")


def _same(model: nn.Module) -> nn.Module:
    return model


def _nothing(*args) -> None:
    return None


@dataclass
class DiscoveryHooks:
    """How a discovery runs around the protocol (every one optional).

    ``in_place`` masks ``model`` itself (no copy: large models), else a copy
    and ``model`` is unchanged.  ``train_mode`` puts the masked model in
    training mode each epoch (engine/training.train_mode_for: e.g. BatchNorm
    statistics frozen; masked layers must stay in training mode, where they
    apply the soft mask).  ``prepare`` wraps the masked model once (DDP,
    FSDP2, activation checkpointing); ``compile_model`` compiles it in place;
    ``before_epoch`` runs at each epoch's start (``sampler.set_epoch``);
    ``state`` saves and restores progress; ``log_dir`` None writes nothing
    (ranks other than the first); ``sum_over_ranks`` sums metrics over ranks;
    ``fused_optimizer`` picks the logits optimizer's fused kernel (None:
    PyTorch's choice); ``generator`` draws the sampled methods' noise."""
    log_dir: Optional[Path] = None
    progress: bool = False
    train_mode: Callable[[nn.Module], None] = nn.Module.train
    in_place: bool = False
    prepare: Callable[[nn.Module], nn.Module] = _same
    compile_model: bool = False
    before_epoch: Callable[[int], None] = _nothing
    state: Optional[DiscoveryState] = None
    fused_optimizer: Optional[bool] = None
    sum_over_ranks: Callable[[list[float]], list[float]] = field(default=lambda values: values)
    generator: Optional[torch.Generator] = None


def discover(model: nn.Module, task: Task, train_data: Iterable, eval_data: Iterable,
             settings: Discovery = Discovery(), hooks: DiscoveryHooks = DiscoveryHooks(),
             pretrained: Optional[nn.Module] = None) -> DiscoveryResult:
    """Find the subnetwork of ``model`` that performs ``task`` on
    ``train_data`` (see module docstring), scored on ``eval_data``, as
    ``settings`` say and ``hooks`` run it.  The trained methods search
    ``settings.lambdas``; the selection methods (magnitude, lottery_ticket)
    choose ``settings.density`` of the weights without training (the lottery
    ticket from the model before fine-tuning, ``pretrained``)."""
    s, h = settings.validate(), hooks  # the settings' one set of rules (Discovery.validate)
    include, exclude = s.include or None, s.exclude or None
    if s.selects:
        return _select(model, task, eval_data, s.method, s.density, pretrained, include,
                       exclude, h.in_place, h.prepare)
    method = s.mask_method(h.generator)
    if pretrained is not None:
        raise ValueError("pretrained is for the lottery_ticket selection")
    lambdas, epochs, beta_final, mask_lr = s.lambdas, s.epochs, s.beta_final, s.mask_lr
    mask_init, seed, anneal_temperature = s.mask_init, s.seed, s.anneal_temperature
    log_dir, progress, train_mode, prepare = h.log_dir, h.progress, h.train_mode, h.prepare
    before_epoch, state, sum_over_ranks = h.before_epoch, h.state, h.sum_over_ranks
    probe = model if h.in_place else copy.deepcopy(model)
    sf.mask_model(probe, include=include, exclude=exclude, init=mask_init, method=method)
    # Before prepare: a learned ablation adds parameters that DDP/FSDP2 must see.
    labels_task = task
    task = ablating(task, probe, s.ablation, s.objective)
    probe = prepare(probe)
    if h.compile_model:
        probe.compile()
    layers = sf.masked_layers(probe)
    # After prepare: FSDP2 has replaced the logits by sharded parameters (keep_exactly,
    # the densities and record_means work on the shards).
    logits = [s for layer in layers.values() for _, s in layer.masked_parameters().values()]
    start_means(probe, labels_task, s.ablation, train_data)
    if s.ablation == "corrupted":  # each batch's partners run first (engine/ablation.py)
        train_data = recording_partners(train_data, probe, labels_task)
        eval_data = recording_partners(eval_data, probe, labels_task)
    learned = sf.nn.ablation_parameters(probe)  # after prepare: FSDP2's sharded parameters
    learned_start = [p.detach().clone() for p in learned]
    candidates = []
    # A target density is one run, kept under the key λ = 0 (no fixed penalty).
    for lam in ([0.0] if s.target_density is not None else lambdas):
        done = state.finished(lam) if state is not None else None
        if done is not None:
            candidates.append((lam, done[0], done[1].density(), done[1]))
            continue
        sf.sharded.reshard(probe)  # FSDP2: the next forward must read the reset shards
        for layer in layers.values():
            layer.reset_logits(mask_init)
        with torch.no_grad():
            for p, start in zip(learned, learned_start):
                p.copy_(start)
        opt = _mask_optimizer(s.optimizer, logits + learned, mask_lr, h.fused_optimizer)
        target, anneal_from = None, 0
        if s.target_density is not None:
            sf.set_beta(probe, method_beta(method, 0, epochs, beta_final, anneal_temperature))
            anneal_from = epochs // 2 if s.target_warmup is None else s.target_warmup
            target = DensityTarget(layers.values(), s.target_density, anneal_from,
                                   s.lagrangian_lr)
        carried = {"density_target": target} if target is not None else {}
        first = state.restore(probe, opt, lam, carried) if state is not None else 0

        def epoch_start(e, lam=lam, target=target):
            # Aiming at a size, β holds at its start while the target warms up (a
            # large β flattens σ(βs) and would lock the logits before the
            # multipliers have grown), then anneals over the remaining epochs.
            sf.set_beta(probe, method_beta(method, max(0, e - anneal_from),
                                           max(1, epochs - anneal_from), beta_final,
                                           anneal_temperature))
            if target is not None:
                target.begin_epoch(e)
                if e >= anneal_from:
                    # Once β grows the logits lock; each annealing epoch starts from the
                    # target size (one shift of every logit), so the final cut moves little.
                    sf.nn.shift_to_density(probe, s.target_density)
            before_epoch(e)

        def epoch_end(e, metrics, lam=lam, opt=opt, carried=carried):
            if state is not None:
                state.save(probe, opt, lam, e + 1, carried)
            return False

        if target is None:
            # Asked for once before the first step, the penalty is computed in the
            # layers' mask pass from that step on — on a resumed run as on an
            # uninterrupted one, whose losses then agree to the last bit.
            with torch.no_grad():
                sf.l0_penalty(probe)
        log = EpochLog(log_dir / f"discovery-lambda{lam:g}.csv" if log_dir else None,
                       ["epoch", "beta", "train_loss", "eval_loss", "eval_accuracy", "density"]
                       + (["target", "expected_density"] if target else []),
                       keep_epochs=first)
        train(probe, opt, task, train_data, epochs, seed, eval_data,
              extra_loss=target.loss if target else (lambda lam=lam: lam * sf.l0_penalty(probe)),
              before_epoch=epoch_start,
              after_epoch=epoch_end, log=log,
              progress=f"discover λ={lam:g}" if progress else None,
              log_extra=lambda target=target: {
                  "beta": float(next(iter(layers.values())).beta),
                  "density": sf.nn.density(probe),
                  **({"target": target.current,
                      "expected_density": target.state()["expected_density"]}
                     if target else {})},
              train_mode=train_mode, first_epoch=first, sum_over_ranks=sum_over_ranks)
        log.close()
        aimed = {}
        if target is not None:
            aimed = target.state()
            sf.nn.keep_exactly(probe, s.target_density)  # the exact size
        probe.eval()  # hard masks
        accuracy = task.evaluate(probe, eval_data).accuracy
        sub = sf.nn.subnetwork_of(probe, metadata={
            "l0_lambda": lam, "epochs": epochs, "beta_final": beta_final, "mask_lr": mask_lr,
            "mask_init": mask_init, "subtask_accuracy": accuracy, **method.as_dict(),
            "ablation": s.ablation, "objective": s.objective, **aimed})
        if state is not None:
            state.record(lam, accuracy, sub)
        candidates.append((lam, accuracy, sub.density(), sub))
    lam, accuracy, density, sub = max(candidates, key=lambda c: (round(c[1], 3), -c[2]))
    if density == 0:
        tried = (f"the target density {s.target_density:g} kept no weight"
                 if s.target_density is not None else
                 f"every λ in {list(lambdas)} ended with no weight kept")
        warnings.warn(
            f"the discovered subnetwork is empty ({tried}): "
            + ("aim at a larger target" if s.target_density is not None else
               "lower λ, train the masks longer or faster (epochs, mask_lr), or start them "
               "positive (mask_init > 0)"), EmptySubnetworkWarning, stacklevel=2)
    return DiscoveryResult(sub, accuracy, density, lam, sub.layer_density(),
                           [(c[0], c[1], c[2]) for c in candidates])


def _select(model, task, eval_data, method, density, pretrained, include, exclude, in_place,
            prepare):
    """Discovery by a selection method: mask, score the hard mask, done."""
    probe = model if in_place else copy.deepcopy(model)
    chosen = sf.selection.select(method, probe, density, pretrained=pretrained, include=include,
                                 exclude=exclude)
    sf.mask_model(probe, include=include, exclude=exclude, subnetwork=chosen)
    probe = prepare(probe)
    probe.eval()
    accuracy = task.evaluate(probe, eval_data).accuracy
    chosen.metadata.update(subtask_accuracy=accuracy, density_target=density)
    sub = chosen
    return DiscoveryResult(sub, accuracy, sub.density(), 0.0, sub.layer_density(),
                           [(0.0, accuracy, sub.density())])


# ----------------------------------------------------------------- transfer
@dataclass(frozen=True)
class Condition:
    choice: str    # which weights are transferred: discovered | random | complement | all | none
    frozen: bool   # whether they stay frozen while the rest trains


CONDITIONS = {
    "subtask_induction": Condition("discovered", True),
    "scratch": Condition("none", False),
    "random": Condition("random", True),
    "complement": Condition("complement", True),
    "full_model": Condition("all", False),
    "subtask_induction_unfrozen": Condition("discovered", False),
    "random_unfrozen": Condition("random", False),
}


def needs_subnetwork(conditions: Iterable[str]) -> bool:
    return any(CONDITIONS[c].choice in ("discovered", "random", "complement")
               for c in conditions if c in CONDITIONS)


def chosen_subnetwork(condition: str, discovered: Optional[sf.Subnetwork], source: nn.Module,
                      seed: int) -> Optional[sf.Subnetwork]:
    """The weights a condition transfers (None: nothing, i.e. scratch)."""
    choice = CONDITIONS[condition].choice
    if choice in ("discovered", "random", "complement") and discovered is None:
        raise ValueError(f"condition {condition!r} needs a discovered subnetwork")
    if choice == "discovered":
        return discovered
    if choice == "random":
        return discovered.random_like(seed)
    if choice == "complement":
        return discovered.complement_sample(seed)
    if choice == "all":
        return sf.Subnetwork.all_of(source)
    return None


def transfer_condition(condition: str, discovered: Optional[sf.Subnetwork], source: nn.Module,
                       target: nn.Module, seed: int, reinit: str):
    """Apply ``condition`` to the freshly initialised ``target``: returns
    (frozen set for MaskedAdamW/MaskedSGD, fraction of the covered weights frozen)."""
    chosen = chosen_subnetwork(condition, discovered, source, seed)
    if chosen is None:  # a Subnetwork has __len__: test for None, not truthiness
        return sf.FrozenMasks(), 0.0
    frozen = CONDITIONS[condition].frozen
    masks = sf.transfer(chosen, source, target, reinit=reinit, freeze=frozen)
    return masks, (chosen.density() if frozen else 0.0)
