"""Resumable discovery: the mask logits and their optimizer state saved with
torch.distributed.checkpoint after every epoch, so a killed run resumes where
it stopped — on the same or a different number of ranks (DCP reshards).

Layout under ``OUT``::

    checkpoint/lambda-<λ>/epoch-<n>/   a DCP checkpoint after n epochs of λ, and
                                       carried.pt: the RNG states and the run's
                                       other carried state (a target's multipliers)
    checkpoint/lambda-<λ>/latest.json  {"epoch": n}, written once epoch-n is complete
    lambda-<λ>/subnetwork.safetensors  λ's finished hard mask
    lambda-<λ>/result.json             its subtask accuracy

The trained tensors are saved (the logits, a learned ablation's inputs; the
frozen weights never change) with their optimizer, and beside them the global
RNG states and what the run carries between epochs (``extra``), so a resumed
run ends exactly where an uninterrupted one does.  The first rank writes the
small files; DCP writes every rank's shards itself.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

import subind_fast as sf

from .distributed import Ranks
from .files import atomic_write, atomic_write_json


# Fault injection for crash-recovery tests: SUBIND_CRASH_AFTER=<λ>/<epoch> ends
# every rank abruptly (no clean-up) once that epoch's checkpoint is complete;
# <folder>:<λ>/<epoch> only in the run kept in that folder (a control's, e.g.
# shuffled_labels:0.0001/2).
CRASH_AFTER = "SUBIND_CRASH_AFTER"
CRASH_EXIT_CODE = 75
CARRIED = "carried.pt"


def _lambda_name(lam: float) -> str:
    return f"lambda-{lam:g}"


class CheckpointedDiscovery:
    """engine.protocol.DiscoveryState kept in ``out`` with DCP."""

    def __init__(self, out: Path, ranks: Ranks):
        self.out, self.ranks = Path(out), ranks

    # ------------------------------------------------------------ finished λ
    def finished(self, lam: float) -> Optional[tuple[float, sf.Subnetwork]]:
        folder = self.out / _lambda_name(lam)
        if not (folder / "result.json").is_file():
            return None
        path = folder / "result.json"
        try:
            accuracy = json.loads(path.read_text())["accuracy"]
            if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) \
                    or not 0 <= accuracy <= 1:
                raise ValueError(f"accuracy {accuracy!r} is not a number in [0, 1]")
            return float(accuracy), sf.Subnetwork.load(folder / "subnetwork.safetensors")
        except (ValueError, KeyError, TypeError, OSError) as err:
            raise ValueError(f"{path} (λ={lam:g}'s finished result) is damaged "
                             f"({type(err).__name__}: {err}); remove {folder} to run λ={lam:g} "
                             "again") from None

    def record(self, lam: float, accuracy: float, subnetwork: sf.Subnetwork) -> None:
        if self.ranks.is_main:
            folder = self.out / _lambda_name(lam)
            subnetwork.save(folder / "subnetwork.safetensors")
            atomic_write_json(folder / "result.json", {"l0_lambda": lam, "accuracy": accuracy,
                                                       "density": subnetwork.density()})
            shutil.rmtree(self.out / "checkpoint" / _lambda_name(lam), ignore_errors=True)
            if (self.out / "checkpoint").is_dir() and not any((self.out / "checkpoint").iterdir()):
                (self.out / "checkpoint").rmdir()
        self.ranks.barrier()

    # ------------------------------------------------------------ per epoch
    @staticmethod
    def _trained_state(model: nn.Module, optimizer) -> tuple[dict, dict]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        trained = {s for layer in sf.masked_layers(model).values()
                   for _, s in layer.masked_weights} | {"ablation_input"}
        return ({k: v for k, v in model_state.items() if k.rpartition(".")[2] in trained},
                optim_state)

    def save(self, model: nn.Module, optimizer, lam: float, epoch: int,
             extra: Optional[dict] = None) -> None:
        import torch.distributed.checkpoint as dcp

        folder = self.out / "checkpoint" / _lambda_name(lam)
        model_state, optim_state = self._trained_state(model, optimizer)
        with warnings.catch_warnings():  # one process without a group: intended
            warnings.filterwarnings("ignore", message=".*assuming the intent is to")
            dcp.save({"logits": model_state, "optimizer": optim_state},
                     checkpoint_id=str(folder / f"epoch-{epoch}"))
        self.ranks.barrier()
        if self.ranks.is_main:
            carried = {"rng": torch.get_rng_state(),
                       "cuda_rng": (torch.cuda.get_rng_state_all()
                                    if torch.cuda.is_available() else []),
                       **{name: obj.state_dict() for name, obj in (extra or {}).items()}}
            atomic_write(folder / f"epoch-{epoch}" / CARRIED,
                         lambda tmp: torch.save(carried, tmp))
            atomic_write_json(folder / "latest.json", {"epoch": epoch})
            for old in folder.glob("epoch-*"):
                if old.name != f"epoch-{epoch}":
                    shutil.rmtree(old, ignore_errors=True)
        self.ranks.barrier()
        if os.environ.get(CRASH_AFTER) in (f"{lam:g}/{epoch}", f"{self.out.name}:{lam:g}/{epoch}"):
            os._exit(CRASH_EXIT_CODE)  # fault injection: a kill right after this checkpoint

    def restore(self, model: nn.Module, optimizer, lam: float,
                extra: Optional[dict] = None) -> int:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        latest = self.out / "checkpoint" / _lambda_name(lam) / "latest.json"
        if not latest.is_file():
            return 0
        try:
            epoch = int(json.loads(latest.read_text())["epoch"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{latest} is damaged ({type(err).__name__}: {err}); remove "
                             f"{latest.parent} to restart λ={lam:g} from its first epoch") \
                from None
        model_state, optim_state = self._trained_state(model, optimizer)
        state = {"logits": model_state, "optimizer": optim_state}
        folder = latest.parent / f"epoch-{epoch}"
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*assuming the intent is to")
                dcp.load(state, checkpoint_id=str(folder))
            carried = torch.load(folder / CARRIED, weights_only=True)
            for name, obj in (extra or {}).items():
                obj.load_state_dict(carried[name])
        except (Exception, dcp.api.CheckpointException) as err:  # the latter: a BaseException
            raise ValueError(
                f"the checkpoint {folder} is damaged or incomplete (or from another version) "
                f"({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); remove "
                f"{latest.parent} to restart λ={lam:g} from its first epoch (finished λ "
                "values are kept)") from err
        set_state_dict(model, optimizer, model_state_dict=state["logits"],
                       optim_state_dict=state["optimizer"],
                       options=StateDictOptions(strict=False))
        torch.set_rng_state(carried["rng"])
        if carried["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(carried["cuda_rng"])
        return epoch
