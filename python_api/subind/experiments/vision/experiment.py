"""The vision Subtask Induction experiment (paper §5, App. C) on the generic
engine: stages cached once per architecture, then a resumable, shardable
sweep over (architecture, condition, N, seed).

    base/{arch}/model.safetensors      base model (synthetic: trained on independent cues)
    adapted/{arch}/model.safetensors   + a 16-way head trained on the original images
                                       with the features frozen ("pretrained")
    subnetworks/{arch}.safetensors     discovered on pooled images in the adapted model
    subnetworks/{arch}-random-init.safetensors   … in a randomly initialised one (App. C.2)
    subnetworks/{arch}[-random-init]/seed-{k}.safetensors   … with --discovery-seeds: one per
                                       discovery seed, beside their stability
                                       (engine/discovery_seeds.py)
    runs/{condition}/{arch}-N{N}-s{seed}.json   one record per run (+ per-epoch .csv,
                                       from epochs_trained 0: before training)
    stimuli/cue-conflict/…             the cue-conflict images in Geirhos' layout
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import subind_fast as sf

from ...engine.speed import apply_speed_options
from ...engine import manifest
from ...engine.models import load_model_file, load_weights, save_model_file
from ...engine.records import software_versions
from ...engine.discovery_seeds import SeededDiscovery, one_or_seeded
from ...engine.protocol import DiscoveryHooks, check_fits, discover, transfer_condition
from ...engine.sweep import Sweep, SweepResult, cached_stage
from ...engine.training import (EpochLog, batchnorm_layers, reestimate_batchnorm,
                                train_mode_for, train)
from . import architectures as arch_lib
from .config import CONDITIONS, EXPERIMENT, KEY_FIELDS, RECORD_FIELDS, TIMM_NAMES, VisionConfig
from .datasets import FolderData, SyntheticData
from ...shape_bias.classifiers import preprocessing_of
from ...shape_bias.evaluation import Decision, summarize
from ...engine.classification import Classification, inverse_frequency_weights
from .task import TwoCueTask, image_classification

def classifier_name(model: nn.Module) -> str:
    return model.pretrained_cfg["classifier"]


class VisionExperiment:
    def __init__(self, cfg: VisionConfig, out: Path, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out), progress  # validated where built
        self.synthetic = cfg.data == "synthetic"
        if any(CONDITIONS[c].engine in ("subtask_induction", "random", "complement")
               for c in cfg.conditions):
            with torch.device("meta"):  # the layers' kinds, no weights
                for arch in cfg.archs:
                    probe = self._architecture(arch, 16, seed=0)
                    check_fits(probe, self.discovery_settings(probe), cfg.discovery_batch_size)
        self.out.mkdir(parents=True, exist_ok=True)
        manifest.claim(self.out, EXPERIMENT, cfg.identity())
        self.data = SyntheticData(cfg, self.out) if self.synthetic else FolderData(cfg, self.out)
        self.classes = len(self.data.class_names)
        self.base_classes = 2 * self.classes if self.synthetic else 1000
        self._tasks: dict = {}
        self._imagenet: dict = {}
        keys = [(a, c, n, s) for a in cfg.archs for c in cfg.conditions
                for n in cfg.n_disambiguation for s in cfg.seeds]
        self.sweep = Sweep(keys, KEY_FIELDS, RECORD_FIELDS, lambda key: self.run_path(*key))
        self._stages: dict = {}

    def discovery_settings(self, model: nn.Module):
        """The discovery as it runs on ``model``: cfg.discovery, with the
        classifier left out unless mask_head."""
        cfg = self.cfg
        return dataclasses.replace(cfg.discovery, exclude=cfg.discovery.exclude + (
            [] if cfg.mask_head else [classifier_name(model)]))

    def run_path(self, arch: str, condition: str, n: int, seed: int) -> Path:
        return self.out / "runs" / condition / f"{arch}-N{n}-s{seed}.json"

    def task_for(self, arch: str) -> Classification:
        """Synthetic images use one fixed normalisation; real ones the model's own."""
        if arch not in self._tasks:
            if self.synthetic:
                self._tasks[arch] = image_classification(self.cfg.device)
            else:
                pre = preprocessing_of(self.model(arch, self.classes, 0))
                self._tasks[arch] = image_classification(self.cfg.device, pre.mean, pre.std)
        return self._tasks[arch]

    def _test_sets(self):
        """(original, pooled) test data: ImageNet val for folder data."""
        return (getattr(self.data, "original_test", self.data.original_eval)(),
                getattr(self.data, "pooled_test", self.data.pooled_eval)())

    def model(self, arch: str, num_classes: int, seed: int) -> nn.Module:
        return self._architecture(arch, num_classes, seed).to(self.cfg.device)

    def _architecture(self, arch: str, num_classes: int, seed: int) -> nn.Module:
        """``arch`` as this data uses it (timm's for folder data), initialised
        from ``seed``, on torch's default device."""
        cfg = self.cfg
        if not self.synthetic:
            import timm

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return timm.create_model(TIMM_NAMES[arch], pretrained=False,
                                         num_classes=num_classes)
        width = cfg.resnet_width if arch == "resnet18" else cfg.vit_width
        return arch_lib.make_model(arch, num_classes, width, seed, cfg.resnet_stem_stride)

    def _progress(self, text: str) -> Optional[str]:
        return text if self.progress else None

    # ------------------------------------------------------------ stages
    def base_model(self, arch: str) -> nn.Module:
        """Trained on images whose shape and texture vary independently, with
        a shape head and a texture head: the model knows both cues."""
        cfg = self.cfg
        if not self.synthetic:
            return self._imagenet_model(arch)

        def build(path):
            model = self.model(arch, 2 * self.classes, seed=0)
            task = TwoCueTask(self.classes, self.cfg.device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.base_lr, weight_decay=0.05)
            start = time.time()
            log = EpochLog(path.parent / "train.csv",
                           ["epoch", "train_loss", "eval_loss", "eval_accuracy"])
            samples, epochs = cfg.base_recipe(arch)
            final = train(model, optimizer, task, self.data.base(samples), epochs, seed=0,
                          eval_data=self.data.base_eval(), log=log,
                          progress=self._progress(f"base {arch}"))
            log.close()
            save_model_file(model, path)
            shape_head, texture_head = task.head_accuracies(model, self.data.base_eval())
            pooled_shape, _ = task.head_accuracies(model, self.data.pooled_eval())
            return model, {"arch": arch, "two_cue_accuracy": final.accuracy,
                           "shape_head_accuracy": shape_head,
                           "texture_head_accuracy": texture_head,
                           "shape_head_pooled_accuracy": pooled_shape,
                           "seconds": time.time() - start, "versions": software_versions("timm")}

        return cached_stage(self.out / "base" / arch / "model.safetensors",
                            lambda p: load_model_file(self.model(arch, 2 * self.classes, 0), p,
                                            cfg.device), build)

    def _imagenet_model(self, arch: str) -> nn.Module:
        """Folder data: the base model is the ImageNet-trained one, read from its file."""
        if arch not in self._imagenet:
            model = self.model(arch, 1000, seed=0)
            weights = getattr(self.cfg, f"{arch}_weights")
            load_weights(model, Path(weights), f"timm {TIMM_NAMES[arch]}")
            self._imagenet[arch] = model
        return self._imagenet[arch]

    def adapted_model(self, arch: str) -> nn.Module:
        """The base model with a fresh 16-way head trained on the original
        (aligned) images while every other weight and statistic stays frozen."""
        cfg = self.cfg

        def fresh_head(model):
            model.reset_classifier(self.classes)
            return model.to(cfg.device)

        def build(path):
            model = fresh_head(copy.deepcopy(self.base_model(arch)))
            head = model.get_classifier()
            for p in model.parameters():
                p.requires_grad_(False)
            for p in head.parameters():
                p.requires_grad_(True)
            optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr)
            start = time.time()
            task = self.task_for(arch)
            final = train(model, optimizer, task, self.data.head_training(),
                          cfg.head_epochs, seed=0, eval_data=self.data.original_eval(),
                          train_mode=lambda m: m.eval(),  # features and statistics frozen
                          log=EpochLog(path.parent / "train.csv",
                                       ["epoch", "train_loss", "eval_loss", "eval_accuracy"]),
                          progress=self._progress(f"head {arch}"))
            for p in model.parameters():
                p.requires_grad_(True)
            save_model_file(model, path)
            pooled = task.evaluate(model, self.data.pooled_eval()).accuracy
            return model, {"arch": arch, "original_accuracy": final.accuracy,
                           "pooled_accuracy": pooled, "seconds": time.time() - start}

        return cached_stage(self.out / "adapted" / arch / "model.safetensors",
                            lambda p: load_model_file(
                                fresh_head(self.model(arch, self.base_classes, 0)), p,
                                cfg.device), build)

    def random_init_model(self, arch: str) -> nn.Module:
        return self.model(arch, self.classes, seed=12345)

    def _discovered(self, arch: str, source_kind: str, seed: Optional[int], path: Path,
                    log_dir: Path) -> tuple[sf.Subnetwork, dict]:
        """Discovered on pooled images in the adapted (or a random-init) model
        as cfg.discovery says (with ``seed`` for its --seed when given) and
        saved at ``path``; masks on every conv/linear weight, the classifier's
        only with mask_head.  The lottery ticket compares the adapted model
        with the base model's initialisation."""
        cfg = self.cfg
        source = self.source_model(arch, source_kind)
        settings = self.discovery_settings(source)
        if seed is not None:
            settings = dataclasses.replace(settings, seed=seed)
        paired = settings.ablation == "corrupted"
        initial = None
        if settings.method == "lottery_ticket":
            initial = self.model(arch, 2 * self.classes, seed=0)
            initial.reset_classifier(self.classes)
        start = time.time()
        result = discover(source, self.task_for(arch),
                          self.data.pooled(seed=settings.seed,
                                           pair_seed=settings.seed if paired else None),
                          self.data.pooled_eval(pair_seed=settings.seed + 1 if paired else None),
                          settings,
                          DiscoveryHooks(log_dir=log_dir, progress=self.progress,
                                         compile_model=apply_speed_options(
                                             cfg.kernels, cfg.compile, cfg.device)),
                          pretrained=initial)
        result.subnetwork.metadata.update(arch=arch, source=source_kind, seed=settings.seed)
        result.subnetwork.save(path)
        return result.subnetwork, {
            "arch": arch, "source": source_kind, "seed": settings.seed,
            "pooled_accuracy": result.accuracy, "density": result.density,
            "l0_lambda": result.l0_lambda, "layer_density": result.layer_density,
            "candidates": result.candidates, "seconds": time.time() - start}

    def _stage_name(self, arch: str, source_kind: str) -> str:
        return arch if source_kind == "adapted" else f"{arch}-random-init"

    def subnetwork(self, arch: str, source_kind: str) -> sf.Subnetwork:
        """The one discovery (cfg.discovery, its --seed)."""
        name = self._stage_name(arch, source_kind)
        return cached_stage(self.out / "subnetworks" / f"{name}.safetensors", sf.Subnetwork.load,
                            lambda path: self._discovered(arch, source_kind, None, path,
                                                          path.parent / f"{name}-logs"))

    def seeded_discovery(self, arch: str, source_kind: str) -> SeededDiscovery:
        """The discovery once per --discovery-seeds seed, and their stability."""
        def accuracy_alone(sub: sf.Subnetwork) -> float:
            """With BatchNorm statistics re-estimated on the pooled discovery images:
            the discovery trains them with the masks (batch statistics), so the
            accuracy it reports rests on them too."""
            task = self.task_for(arch)
            model = sub.ablate(copy.deepcopy(self.source_model(arch, source_kind)), "keep")
            reestimate_batchnorm(model, task, self.data.pooled())
            return task.evaluate(model, self.data.pooled_eval()).accuracy

        return SeededDiscovery(
            self.out / "subnetworks" / self._stage_name(arch, source_kind),
            self.cfg.repeated_discovery.discovery_seeds,
            lambda seed, path, log_dir: self._discovered(arch, source_kind, seed, path, log_dir),
            accuracy_alone)

    def subnetwork_for(self, arch: str, source_kind: str, seed: int
                       ) -> tuple[sf.Subnetwork, Optional[str]]:
        """(the subnetwork the run with ``seed`` transfers, its label: which
        discovery seed's, or None for the one discovery)."""
        return one_or_seeded(self.cfg.repeated_discovery, seed,
                             lambda: self.subnetwork(arch, source_kind),
                             lambda: self.seeded_discovery(arch, source_kind))

    def source_model(self, arch: str, kind: str) -> nn.Module:
        key = (arch, kind)
        if key not in self._stages:
            self._stages[key] = (self.adapted_model(arch) if kind == "adapted"
                                 else self.random_init_model(arch))
        return self._stages[key]

    # ------------------------------------------------------------ one run
    def _optimizer(self, model: nn.Module, frozen) -> torch.optim.Optimizer:
        cfg = self.cfg
        if cfg.transfer_optimizer == "sgd":
            return sf.MaskedSGD(model.parameters(), frozen=frozen, lr=cfg.transfer_lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return sf.MaskedAdamW(model.parameters(), frozen=frozen, lr=cfg.transfer_lr,
                              weight_decay=cfg.weight_decay)

    def prepared_model(self, arch: str, condition: str, seed: int):
        """(model to train, frozen set, fraction frozen, label of the
        transferred subnetwork or None) for ``condition``."""
        spec = CONDITIONS[condition]
        if spec.engine is None:  # fine-tune (or just evaluate) the adapted model
            return (copy.deepcopy(self.source_model(arch, "adapted")), sf.FrozenMasks(), 0.0,
                    None)
        target = self.model(arch, self.classes, seed=1000 + seed)
        if spec.engine == "scratch":
            return target, sf.FrozenMasks(), 0.0, None
        source = self.source_model(arch, spec.source)
        sub, label = self.subnetwork_for(arch, spec.source, seed)
        frozen, fraction = transfer_condition(spec.engine, sub, source, target, seed,
                                              self.cfg.reinit)
        return target, frozen, fraction, label

    def cue_conflict(self, arch: str, model: nn.Module) -> dict:
        data, stimuli = self.data.conflict()
        predicted, _ = self.task_for(arch).predictions(model, data)
        names = self.data.class_names
        decisions = [Decision(s, names[p]) for s, p in zip(stimuli, predicted.tolist())]
        return summarize(decisions, names, self.cfg.bootstrap)

    def frozen_weights_alone(self, model: nn.Module, frozen) -> Optional[nn.Module]:
        """The frozen weights by themselves: a copy of the prepared model with
        every trainable entry of a partly frozen parameter zeroed (the rest —
        normalisation, head — as prepared).  None when nothing is frozen."""
        if not len(frozen):
            return None
        alone = copy.deepcopy(model)
        twin = dict(zip((id(p) for p in model.parameters()), alone.parameters()))
        with torch.no_grad():
            for param in frozen:
                kept = sf.unpack_bits(frozen[param], param.shape).to(param.device)
                twin[id(param)].mul_(kept.to(param.dtype))
        return alone

    def pooled_at_transfer(self, arch: str, model: nn.Module, frozen) -> dict:
        """Pooled accuracy at transfer, before any training: of the frozen weights
        alone, and — for models with BatchNorm — of them and of the prepared
        model (fresh weights included) with statistics re-estimated on the pooled
        discovery images.  Beside the log's epoch 0 they tell whether the
        transferred ability is lost to the statistics the target inherits or to
        the fresh weights."""
        task, pooled_eval = self.task_for(arch), self.data.pooled_eval()
        alone = self.frozen_weights_alone(model, frozen)
        out = {"frozen_weights_alone_pooled_accuracy":
               None if alone is None else task.evaluate(alone, pooled_eval).accuracy,
               "pooled_bn_stats": None}
        if not batchnorm_layers(model):
            return out
        restated = copy.deepcopy(model)
        reestimate_batchnorm(restated, task, self.data.pooled())
        out["pooled_bn_stats"] = {"at_transfer": task.evaluate(restated, pooled_eval).accuracy}
        if alone is not None:
            reestimate_batchnorm(alone, task, self.data.pooled())
            out["pooled_bn_stats"]["frozen_weights_alone"] = task.evaluate(
                alone, pooled_eval).accuracy
        return out

    def transfer_run(self, arch: str, condition: str, n: int, seed: int) -> dict:
        cfg, spec = self.cfg, CONDITIONS[condition]
        model, frozen, fraction, sub_label = self.prepared_model(arch, condition, seed)
        at_transfer = self.pooled_at_transfer(arch, model, frozen)
        start = time.time()
        if spec.trains:
            pooled_eval = self.data.pooled_eval()
            train_data = (self.data.mixture(seed, n) if spec.data == "mixture"
                          else self.data.original(seed, n))
            task = self.task_for(arch)
            if cfg.class_weighted:
                task = image_classification(
                    cfg.device, task.mean, task.std,
                    class_weights=inverse_frequency_weights(train_data, self.classes))
            # from epochs_trained 0: what the transferred subnetwork with fresh weights
            # knows before training changes it
            log = EpochLog(self.run_path(arch, condition, n, seed).with_suffix(".csv"),
                           ["epochs_trained", "train_loss", "eval_loss", "eval_accuracy",
                            "pooled_accuracy"])
            train(model, self._optimizer(model, frozen), task, train_data,
                  cfg.transfer_epochs, seed=seed, eval_data=self.data.original_eval(), log=log,
                  log_extra=lambda: {"pooled_accuracy":
                                     task.evaluate(model, pooled_eval).accuracy},
                  train_mode=train_mode_for(cfg.bn_stats), log_start=True)
            log.close()
        conflict = self.cue_conflict(arch, model)
        original_test, pooled_test = self._test_sets()
        task = self.task_for(arch)
        return {
            "original_accuracy": task.evaluate(model, original_test).accuracy,
            "pooled_accuracy": task.evaluate(model, pooled_test).accuracy,
            "cue_conflict": conflict, "frozen_fraction": fraction, "subnetwork": sub_label,
            **at_transfer,
            "train_set_size": (self.data.training_set_size(spec.data, n) if spec.trains
                               else 0),
            "seconds": time.time() - start, "config": asdict(cfg),
            "versions": software_versions("timm")}

    def prepare_stages(self) -> None:
        """Build every cached stage the grid's conditions read, here and now: run
        before shard processes split the runs, so the stages train once with all
        of this process's threads instead of one shard's while the others wait."""
        for arch in self.cfg.archs:
            for condition in self.cfg.conditions:
                spec = CONDITIONS[condition]
                if spec.engine is None:
                    self.source_model(arch, "adapted")
                elif spec.engine != "scratch":
                    if self.cfg.repeated_discovery.repeated:
                        self.seeded_discovery(arch, spec.source).core()
                    else:
                        self.subnetwork(arch, spec.source)

    def run(self, shard: tuple[int, int] = (0, 1)) -> SweepResult:
        return self.sweep.run(lambda key: self.transfer_run(*key), shard, progress=self.progress)
