"""`subind arithmetic …`: run (a shard of) the arithmetic sweep."""
from __future__ import annotations

from ...engine import cli as C

# (flag, config field, type, help) of the arithmetic command's overrides.
OPTIONS = [
    ("--layers", "layers", C.int_list, "layer counts, e.g. 2,4,6"),
    ("--n-disamb", "n_disambiguation", C.int_list, "disambiguation sample sizes, e.g. 10,100,1000"),
    ("--conditions", "conditions", C.str_list,
     "subtask_induction,scratch,random,complement,full_model,subtask_induction_unfrozen,"
     "random_unfrozen"),
    ("--seeds", "seeds", C.int_list, "e.g. 0,1,2"),
    ("--base", "base", str, "base computation, e.g. 'a+a*b'"),
    ("--subtask", "subtask", str, "subtask computation, e.g. 'a*b'"),
    ("--target", "target", str, "target computation, e.g. 'a^2+a*b'"),
    ("--p", "p", int, "modulus (default 7)"),
    ("--numbers", "n_numbers", int, "number tokens 0..N-1 (the paper: 1000)"),
    ("--reinit", "reinit", str, "all (paper text) or masked (authors' code)"),
    ("--base-epochs", "base_max_epochs", int, "base training: at most this many epochs"),
    ("--base-lr", "base_lr", float, "base training learning rate"),
    ("--discovery-epochs", "discovery_epochs", int, "discovery epochs (beta 1 -> 100)"),
    ("--mask-lr", "mask_lr", float, "discovery learning rate of the mask logits"),
    ("--lambdas", "lambdas", C.float_list, "L0 penalties to try, e.g. 1e-7,5e-7,1e-8"),
    ("--transfer-epochs", "transfer_epochs", int, "transfer training epochs"),
    ("--transfer-lr", "transfer_lr", float, "transfer training learning rate"),
    ("--batch-size", "batch_size", int, "batch size of base training and discovery"),
    ("--transfer-batch-size", "transfer_batch_size", int, "batch size of transfer training"),
    ("--device", "device", str, "cpu, cuda, cuda:1, ..."),
    ("--kernels", "kernels", str, "fused (ours, default) or eager (plain PyTorch ops)"),
    ("--compile", "compile", str, "torch.compile the discovery model: auto (default), on, off"),
]


def _experiment():
    from . import experiment as E

    return E.PRESETS, E.config_for, E.ArithmeticExperiment


def register(subparsers) -> None:
    C.add_sweep_command(subparsers, "arithmetic", "the arithmetic experiment (paper §4)", OPTIONS, _experiment)
