"""Data-parallel runs under torchrun with PyTorch's own engines: DDP and
FSDP2 (``fully_shard``).

One process per rank; ``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK, and a
plain ``python -m subind …`` is a world of one (no process group).  Every rank
sees the same global batch split evenly (a DistributedSampler whose order
changes with ``set_epoch``), so a run over N ranks computes what one process
computes with the same global batch: each rank's loss is a mean over its share,
and both engines average gradients over ranks.  Sums for logs and metrics are
all-reduced; the first rank writes files.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from subind_fast.naming import BLOCK_CONTAINERS

from .ablation import Paired
from .classification import IGNORE_LABEL

STRATEGIES = ("none", "ddp", "fsdp2")


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    started_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over ranks (float64: exact for counts)."""
        if self.world == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(total)
        return total.tolist()

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Leave the group (called once the run's models are gone: gloo work
        objects still referenced at teardown can abort the process)."""
        if self.started_group and dist.is_initialized():
            import gc

            gc.collect()
            dist.barrier()
            dist.destroy_process_group()


def start(device: str) -> Ranks:
    """This process's place in the run (starts the process group under torchrun:
    NCCL for CUDA, gloo for the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible")
        torch.cuda.set_device(local_rank)
        where = torch.device("cuda", local_rank)
    elif device == "cpu":
        where = torch.device("cpu")
    else:
        raise ValueError(f"--device must be cpu or cuda, got {device!r}")
    if "WORLD_SIZE" not in os.environ:  # not under torchrun
        return Ranks(device=where)
    started = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if where.type == "cuda" else "gloo")
        started = True
    return Ranks(rank, world, where, started)


def train_loader(dataset: Dataset, global_batch: int, ranks: Ranks, seed: int,
                 workers: int = 0) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled batches of global_batch / world samples for this rank, the last
    incomplete batch dropped (the same samples on any number of ranks)."""
    if global_batch % ranks.world:
        raise ValueError(f"--batch-size {global_batch} must be divisible by the number of "
                         f"ranks ({ranks.world})")
    sampler = DistributedSampler(dataset, num_replicas=ranks.world, rank=ranks.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=global_batch // ranks.world, sampler=sampler,
                        drop_last=True, num_workers=workers,
                        pin_memory=ranks.device.type == "cuda")
    if len(loader) == 0:
        raise ValueError(f"the training data ({len(dataset)} samples) hold no full batch of "
                         f"{global_batch}")
    return loader, sampler


class _EvalShard(Dataset):
    """Rank r's samples r, r+world, …, padded to the same length on every rank
    with copies of sample 0 labelled IGNORE_LABEL: every rank runs the same number of
    forwards (FSDP2 and DDP forwards are collectives; uneven counts would
    hang), and the padding counts for nothing."""

    def __init__(self, dataset: Dataset, ranks: Ranks):
        self.dataset = dataset
        self.indices = list(range(ranks.rank, len(dataset), ranks.world))
        self.length = -(-len(dataset) // ranks.world)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if i < len(self.indices):
            return self.dataset[self.indices[i]]
        sample = self.dataset[0]
        if isinstance(sample, Paired):  # the padding's partner counts for nothing either
            return Paired(self._ignored(sample.clean), sample.corrupted)
        return self._ignored(sample)

    def _ignored(self, sample):
        if not isinstance(sample, (tuple, list)) or len(sample) < 2:
            raise ValueError(f"evaluation data of {len(self.dataset)} samples do not split "
                             "evenly over the ranks, and their samples are not (input, label) "
                             "pairs that could be padded; use a multiple of the rank count")
        inputs, label = sample[:2]
        return inputs, (torch.tensor(IGNORE_LABEL) if isinstance(label, torch.Tensor)
                        else IGNORE_LABEL)


def eval_loader(dataset: Dataset, batch: int, ranks: Ranks, workers: int = 0) -> DataLoader:
    """Every sample exactly once over all ranks, in the same number of batches
    on each (see _EvalShard)."""
    return DataLoader(_EvalShard(dataset, ranks), batch_size=batch, shuffle=False,
                      num_workers=workers)


def blocks_of(model: nn.Module, pattern: Optional[str] = None) -> list[nn.Module]:
    """The repeated blocks to shard or checkpoint one by one: modules whose
    name matches ``pattern`` (a glob; a match inside another match is part of
    that block, not a block of its own), or by default the children of every
    ModuleList/Sequential named like a block container (BLOCK_CONTAINERS)."""
    found = []
    matched: list[str] = []
    for name, module in model.named_modules():
        if pattern is not None:
            if name and fnmatch.fnmatchcase(name, pattern):
                if any(name.startswith(outer + ".") for outer in matched):
                    continue  # inside a block already chosen: counted with it
                matched.append(name)
                found.append(module)
        elif (isinstance(module, (nn.ModuleList, nn.Sequential))
              and name.rpartition(".")[2] in BLOCK_CONTAINERS):
            found.extend(module.children())
    if pattern is not None and not found:
        raise ValueError(f"--blocks {pattern!r} matches no module")
    return found


def logits_fp32_policy():
    """FSDP2 mixed precision for masked models: parameters are all-gathered in
    their stored dtype and gradients reduced in it, so frozen weights stored in
    bf16 travel as bf16 while the logits stay fp32 (a ``param_dtype`` would cast
    the logits too; FSDP2 accepts mixed dtypes in a group when only one dtype
    is trainable — here only the logits are)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=None, reduce_dtype=None)


def wrap(model: nn.Module, strategy: str, ranks: Ranks, blocks: list[nn.Module]) -> nn.Module:
    """``model`` (already masked, on its device) under DDP, or sharded with
    ``fully_shard`` block by block and at the root."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "none":
        if ranks.world > 1:
            raise ValueError(f"{ranks.world} ranks need --strategy ddp or fsdp2")
        return model
    if not dist.is_initialized():
        # DDP and FSDP2 need a process group even for one rank: start torchrun with one.
        raise ValueError(f"--strategy {strategy} needs torchrun (e.g. torchrun "
                         "--nproc-per-node=1 -m subind discover …)")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [ranks.device.index] if ranks.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    policy = logits_fp32_policy()
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model
