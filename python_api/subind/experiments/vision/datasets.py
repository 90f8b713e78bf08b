"""Where the vision experiment's images come from.  Every source offers the
same sets, as re-iterable batches of (images in [0, 1], labels):

* ``base``            base-model training (synthetic: independent cues, two labels)
* ``original``        transfer training: shape and texture agree (+ N disambiguating)
* ``original_eval``   the same distribution, held out
* ``pooled``          mean-pooled images for discovery (and the data mixture)
* ``pooled_eval``     mean-pooled, held out
* ``conflict``        cue-conflict images with their :class:`Stimulus` records
"""
from __future__ import annotations

from pathlib import Path

import torch

from ...engine.ablation import CorruptedPairs, PairedTensorBatches
from ...engine.classification import IGNORE_LABEL
from ...engine.training import TensorBatches
from . import synthetic as S

EVAL_BATCH = 512


class SyntheticData:
    """The seeded procedural images of synthetic.py, held in memory."""

    class_names = S.CLASS_NAMES

    def __init__(self, cfg, out: Path):
        self.cfg, self.out = cfg, Path(out)
        self.salience = S.Salience(scale=tuple(cfg.object_scale), rotation=cfg.rotation,
                                   jitter=cfg.jitter, contrast=cfg.contrast)
        self._cache: dict = {}

    def _set(self, kind: str, n: int, seed: int) -> S.ImageSet:
        key = (kind, n, seed)
        if key not in self._cache:
            self._cache[key] = S.make_set(kind, n, seed, self.salience)
        return self._cache[key]

    def _batches(self, *tensors, shuffle=False, seed=0, batch_size=None, pair_seed=None):
        """``pair_seed``: each batch paired with its corrupted partners
        (engine/ablation.py), drawn from this seed."""
        device = self.cfg.device
        tensors = tuple(t.to(device) for t in tensors)
        batch_size = batch_size or (self.cfg.batch_size if shuffle else EVAL_BATCH)
        if pair_seed is not None:
            return PairedTensorBatches(*tensors, batch_size=batch_size, shuffle=shuffle,
                                       seed=seed, pair_seed=pair_seed)
        return TensorBatches(*tensors, batch_size=batch_size, shuffle=shuffle, seed=seed)

    # seeds 0..9 name the fixed sets; transfer-training sets follow the run's seed
    def base(self, samples: int):
        """``samples`` images with independent cues, plus a share of untextured
        (flat-filled) objects labelled by shape only: the base model's world,
        like ImageNet, has objects without texture too."""
        s = self._set("independent", samples, 0)
        flat = self._set("pooled", int(round(self.cfg.base_untextured * samples)), 6)
        no_texture = torch.full_like(flat.textures, IGNORE_LABEL)
        return self._batches(torch.cat([s.images, flat.images]), torch.cat([s.shapes, flat.shapes]),
                             torch.cat([s.textures, no_texture]), shuffle=True)

    def base_eval(self):
        s = self._set("independent", self.cfg.eval_samples, 1)
        return self._batches(s.images, s.shapes, s.textures)

    def original(self, seed: int, n_disambiguation: int = 0):
        aligned = self._set("aligned", self.cfg.train_samples, 100 + seed)
        images, labels = aligned.images, aligned.shapes
        if n_disambiguation:
            extra = self._set("independent", n_disambiguation, 200 + seed)
            images, labels = torch.cat([images, extra.images]), torch.cat([labels, extra.shapes])
        return self._batches(images, labels, shuffle=True, seed=seed)

    def mixture(self, seed: int, n_disambiguation: int = 0):
        """The original training images plus the discovery's pooled images."""
        original = self.original(seed, n_disambiguation)
        pooled = self._set("pooled", self.cfg.pooled_samples, 2)
        images = torch.cat([original.tensors[0].cpu(), pooled.images])
        labels = torch.cat([original.tensors[1].cpu(), pooled.shapes])
        return self._batches(images, labels, shuffle=True, seed=seed)

    def head_training(self):
        """The original distribution at the size the head adaptation uses."""
        return self.original(seed=0)

    def original_eval(self):
        s = self._set("aligned", self.cfg.eval_samples, 3)
        return self._batches(s.images, s.shapes)

    def pooled(self, seed: int = 0, pair_seed=None):
        """The discovery images, in an order drawn from ``seed`` (the discovery's)."""
        s = self._set("pooled", self.cfg.pooled_samples, 2)
        return self._batches(s.images, s.shapes, shuffle=True, seed=seed,
                             batch_size=self.cfg.discovery_batch_size, pair_seed=pair_seed)

    def pooled_eval(self, pair_seed=None):
        s = self._set("pooled", self.cfg.eval_samples, 4)
        return self._batches(s.images, s.shapes, pair_seed=pair_seed)

    def conflict(self):
        """(batches of (images, shape labels), stimuli in the same order); the
        images are also written in Geirhos' layout under ``out/stimuli``."""
        s = self._set("conflict", self.cfg.eval_samples, 5)
        stimuli = S.write_geirhos_layout(s, self.out / "stimuli" / "cue-conflict")
        as_written = (s.images * 255).round() / 255  # what the PNG files hold
        return self._batches(as_written, s.shapes), stimuli

    def training_set_size(self, condition_data: str, n_disambiguation: int) -> int:
        size = self.cfg.train_samples + n_disambiguation
        return size + (self.cfg.pooled_samples if condition_data == "mixture" else 0)


class FolderData:
    """16-class ImageNet on disk (``subind imagenet16`` + ``subind mean-pool``):

        DATA/train/<category>/           original training images
        DATA/discovery-pooled/<category>/ mean-pooled discovery subset
        DATA/selection/<category>/       held-out originals (evaluation during training)
        DATA/selection-pooled/<category>/ the same, mean-pooled (discovery's evaluation)
        DATA/val/<category>/             ImageNet validation images (the test set)
        DATA/val-pooled/<category>/      the same, mean-pooled

    and the cue-conflict stimuli (Geirhos' layout) at ``cfg.cue_conflict``.
    Loaded by torch DataLoaders with ``cfg.workers`` worker processes as uint8
    tensors (the task normalises them for each model); training images get a
    random resized crop and flip, evaluation images a resize and centre crop."""

    SPLITS = ("train", "discovery-pooled", "selection", "selection-pooled", "val", "val-pooled")

    def __init__(self, cfg, out: Path):
        from ...shape_bias.categories import CATEGORIES

        self.cfg, self.root = cfg, Path(cfg.data)
        self.class_names = CATEGORIES
        missing = [s for s in self.SPLITS if not (self.root / s).is_dir()]
        if missing:
            raise FileNotFoundError(f"{self.root}: missing {missing} (build them with `subind "
                                    f"imagenet16` and `subind mean-pool`)")
        if not Path(cfg.cue_conflict).is_dir():
            raise FileNotFoundError(f"cue-conflict stimuli {cfg.cue_conflict!r} not found "
                                    f"(--cue-conflict DIR in Geirhos' layout)")

    def _transform(self, train: bool):
        from torchvision.transforms import v2 as T

        size = self.cfg.image_size
        steps = ([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()] if train
                 else [T.Resize(int(size * 256 / 224), antialias=True), T.CenterCrop(size)])
        return T.Compose([T.PILToTensor(), *steps])

    def _loader(self, split: str, train: bool, batch_size=None, seed: int = 0,
                pair_seed=None):
        """``pair_seed``: each image paired with a corrupted partner
        (engine/ablation.py), drawn from this seed."""
        from torchvision.datasets import ImageFolder

        dataset = ImageFolder(str(self.root / split), transform=self._transform(train))
        if tuple(dataset.classes) != tuple(self.class_names):
            raise ValueError(f"{self.root / split}: class folders {dataset.classes} are not "
                             f"the 16 categories {list(self.class_names)}")
        if pair_seed is not None:
            dataset = CorruptedPairs(dataset, pair_seed)
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size or (self.cfg.batch_size if train else EVAL_BATCH // 4),
            shuffle=train, num_workers=self.cfg.workers, pin_memory=self.cfg.device != "cpu",
            persistent_workers=False, generator=torch.Generator().manual_seed(seed))

    def original(self, seed: int, n_disambiguation: int = 0):
        if n_disambiguation:
            raise ValueError("n_disambiguation applies to the synthetic data only")
        return self._loader("train", True, seed=seed)

    def mixture(self, seed: int, n_disambiguation: int = 0):
        from torchvision.datasets import ImageFolder

        parts = [ImageFolder(str(self.root / s), transform=self._transform(True))
                 for s in ("train", "discovery-pooled")]
        return torch.utils.data.DataLoader(
            torch.utils.data.ConcatDataset(parts), batch_size=self.cfg.batch_size, shuffle=True,
            num_workers=self.cfg.workers, pin_memory=self.cfg.device != "cpu",
            generator=torch.Generator().manual_seed(seed))

    def head_training(self):
        return self._loader("train", True)

    def original_eval(self):
        return self._loader("selection", False)

    def original_test(self):
        return self._loader("val", False)

    def pooled(self, seed: int = 0, pair_seed=None):
        """The discovery images, in an order (and augmentation) drawn from ``seed``."""
        return self._loader("discovery-pooled", True, batch_size=self.cfg.discovery_batch_size,
                            seed=seed, pair_seed=pair_seed)

    def pooled_eval(self, pair_seed=None):
        return self._loader("selection-pooled", False, pair_seed=pair_seed)

    def pooled_test(self):
        return self._loader("val-pooled", False)

    def conflict(self):
        from ...shape_bias.stimuli import scan

        stimuli = scan(Path(self.cfg.cue_conflict), self.class_names)
        return _StimulusBatches(stimuli, self.class_names, self.cfg.image_size), stimuli

    def training_set_size(self, condition_data: str, n_disambiguation: int) -> int:
        from torchvision.datasets.folder import IMG_EXTENSIONS

        # Images only, as ImageFolder reads them (a pooled folder also holds
        # its manifest and, perhaps, a preview at the top level).
        count = lambda split: sum(1 for p in (self.root / split).glob("*/**/*")  # noqa: E731
                                  if p.suffix.lower() in IMG_EXTENSIONS)
        return count("train") + (count("discovery-pooled") if condition_data == "mixture" else 0)


class _StimulusBatches:
    """Cue-conflict images as uint8 batches at the model's input size."""

    def __init__(self, stimuli, class_names, size: int):
        self.stimuli, self.size = stimuli, size
        self.labels = torch.tensor([list(class_names).index(s.shape) for s in stimuli])

    def __iter__(self):
        from ...shape_bias.stimuli import batches, resized

        start = 0
        for chunk, images in batches(self.stimuli, 64):
            yield ((resized(images, self.size) * 255).round().to(torch.uint8),
                   self.labels[start:start + len(chunk)])
            start += len(chunk)
