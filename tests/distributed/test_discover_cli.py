"""`subind discover` on any model: one process, DDP and FSDP2 under torchrun
(gloo, 2 ranks) giving the one-process result in float64, resume after a kill
(also at another world size), bf16 storage, activation checkpointing."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

import subind_fast as sf
from subind.cli import main

TINY_VIT = ["--model", "timm:vit_tiny_patch16_224", "--weights", "random", "--model-kwargs",
            json.dumps(dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                            num_classes=16))]
DISCOVERY = ["--data", "experiment:vision/pooled", "--lambdas", "1e-5,1e-4", "--epochs", "3",
             "--batch-size", "64", "--mask-lr", "0.05", "--mask-init", "0.05", "--no-progress"]


def _args(out, *extra):
    return ["discover", *TINY_VIT, *DISCOVERY, "--out", str(out), *extra]


def _torchrun(args, ranks=2, env=None):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={ranks}", "-m", "subind", *args]
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, env=run_env, capture_output=True, text=True, timeout=600)


def _log(out, lam):
    with open(out / f"discovery-lambda{lam}.csv") as f:
        return [[float(x) for x in row] for row in list(csv.reader(f))[1:]]


def _same_run(a, b, tol=1e-9):
    assert sf.Subnetwork.load(a / "subnetwork.safetensors") == \
        sf.Subnetwork.load(b / "subnetwork.safetensors")
    for lam in ("1e-05", "0.0001"):
        torch.testing.assert_close(torch.tensor(_log(a, lam), dtype=torch.float64),
                                   torch.tensor(_log(b, lam), dtype=torch.float64),
                                   rtol=tol, atol=tol)
    assert (a / "candidates.csv").read_text() == (b / "candidates.csv").read_text()


@pytest.fixture(scope="module")
def one_process_fp64(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(_args(out, "--dtype", "fp64")) == 0
    return out


def test_one_process_writes_the_subnetwork_its_table_and_logs(one_process_fp64):
    out = one_process_fp64
    sub = sf.Subnetwork.load(out / "subnetwork.safetensors")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["density"] == pytest.approx(sub.density())
    with open(out / "density.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["parameter"] for r in rows} == set(sub.names())
    assert sum(int(r["kept"]) for r in rows) == sum(k for k, _ in sub.counts().values())
    assert len(_log(out, "1e-05")) == 3 and not (out / "checkpoint").exists()
    lams = [line.split(",")[0] for line in (out / "candidates.csv").read_text().splitlines()[1:]]
    assert lams == ["1e-05", "0.0001"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_match_one_process(strategy, one_process_fp64, tmp_path):
    out = tmp_path / strategy
    done = _torchrun(_args(out, "--dtype", "fp64", "--strategy", strategy))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["ranks"] == 2
    _same_run(one_process_fp64, out)


def test_killed_fsdp2_run_resumes_on_one_rank(one_process_fp64, tmp_path):
    out = tmp_path / "killed"
    crashed = _torchrun(_args(out, "--dtype", "fp64", "--strategy", "fsdp2"),
                        env={"SUBIND_CRASH_AFTER": "1e-05/2"})
    assert crashed.returncode != 0
    assert json.loads((out / "checkpoint" / "lambda-1e-05" / "latest.json").read_text()) == \
        {"epoch": 2}
    assert not (out / "subnetwork.safetensors").exists()
    assert main(_args(out, "--dtype", "fp64")) == 0  # one plain process takes over
    _same_run(one_process_fp64, out)


def test_activation_checkpointing_changes_nothing(one_process_fp64, tmp_path):
    out = tmp_path / "ckpt"
    assert main(_args(out, "--dtype", "fp64", "--checkpoint-activations")) == 0
    assert json.loads((out / "summary.json").read_text())["activation_checkpointing"] == \
        "timm set_grad_checkpointing"
    _same_run(one_process_fp64, out, tol=1e-12)


def test_bf16_weights_find_nearly_the_fp32_subnetwork(tmp_path):
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    assert main(_args(fp32)) == 0
    assert main(_args(bf16, "--dtype", "bf16")) == 0
    a = sf.Subnetwork.load(fp32 / "subnetwork.safetensors")
    b = sf.Subnetwork.load(bf16 / "subnetwork.safetensors")
    assert a.iou(b) > 0.9, a.iou(b)


def test_a_different_configuration_is_refused(one_process_fp64, capsys):
    assert main(_args(one_process_fp64, "--dtype", "fp64", "--epochs", "4")) == 2
    assert "epochs" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size"),
    (["--lambdas", "-1"], "--lambdas"),
    (["--model", "torchvision:resnet18"], "--model must be"),
    (["--weights", "/nonexistent.safetensors"], "/nonexistent.safetensors"),
    (["--data", "experiment:vision/nope"], "offers"),
    (["--data", "imagefolder:/nonexistent"], "/nonexistent"),
    (["--strategy", "ddp"], "torchrun"),
])
def test_bad_arguments_name_the_problem(extra, message, tmp_path, capsys):
    assert main(_args(tmp_path / "bad", *extra)) == 2
    assert message in capsys.readouterr().err


def test_uneven_global_batch_is_refused_under_torchrun(tmp_path):
    done = _torchrun(_args(tmp_path / "odd", "--strategy", "ddp", "--batch-size", "63"))
    assert done.returncode != 0 and "divisible by the number of ranks (2)" in done.stderr


def test_report_reads_a_discovery_directory(one_process_fp64, capsys):
    assert main(["report", str(one_process_fp64)]) == 0
    text = capsys.readouterr().out
    assert "| λ | accuracy | density |" in text and "blocks.0.mlp.fc1.weight" in text
