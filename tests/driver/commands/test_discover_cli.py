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
from subind_fast import analysis as A
from subind.commands import main

TINY_VIT = ["--model", "timm:vit_tiny_patch16_224", "--weights", "random", "--model-kwargs",
            json.dumps(dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                            num_classes=16))]
DISCOVERY = ["--data", "experiment:vision/pooled", "--lambdas", "1e-5,1e-4", "--epochs", "3",
             "--batch-size", "64", "--mask-lr", "0.05", "--mask-init", "0.05", "--no-progress",
             "--no-controls"]


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


def test_fsdp2_aims_at_a_target_size_and_ablates_like_one_process(tmp_path):
    """Target density (the exact cut gathers the sharded logits) and a learned
    ablation (its reference input sharded with the layer) under FSDP2."""
    extra = ["--dtype", "fp64", "--target-density", "0.2", "--ablation", "learned"]
    args = lambda out: [a for a in _args(out, *extra) if a not in ("1e-5,1e-4", "--lambdas")]
    assert main(args(tmp_path / "one")) == 0
    done = _torchrun([*args(tmp_path / "two"), "--strategy", "fsdp2"])
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (sf.Subnetwork.load(tmp_path / d / "subnetwork.safetensors") for d in ("one", "two"))
    assert one == two and one.metadata["ablation"] == "learned"
    kept = sum(k for k, _ in one.counts().values())
    assert kept == round(0.2 * sum(t for _, t in one.counts().values()))


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


ENTRY = ["--model", "entry:discover_entries:block_mlp", "--data",
         "entry:discover_entries:gaussian_data", "--lambdas", "1e-4", "--epochs", "3",
         "--batch-size", "32", "--mask-lr", "0.05", "--mask-init", "0.05", "--dtype", "fp64",
         "--no-progress", "--no-controls"]


def test_entry_points_and_the_generic_checkpoint_wrapper(tmp_path):
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    assert main(["discover", *ENTRY, "--out", str(plain)]) == 0
    assert main(["discover", *ENTRY, "--out", str(ckpt), "--checkpoint-activations"]) == 0
    assert json.loads((ckpt / "summary.json").read_text())["activation_checkpointing"] == \
        "checkpoint_wrapper on 3 blocks"
    assert sf.Subnetwork.load(plain / "subnetwork.safetensors") == \
        sf.Subnetwork.load(ckpt / "subnetwork.safetensors")


def test_transformers_directory_and_image_folder(tmp_path):
    """hf:DIR with its own weights, on an ImageFolder of PNGs."""
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification

    model_dir = tmp_path / "vit"
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(model_dir)
    images = tmp_path / "images"
    g = torch.Generator().manual_seed(0)
    for label in ("a", "b", "c"):
        (images / label).mkdir(parents=True)
        for i in range(12):
            pixels = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(images / label / f"{i}.png")
    out = tmp_path / "run"
    assert main(["discover", "--model", f"hf:{model_dir}", "--hf-class", "image-classification",
                 "--data", f"imagefolder:{images}", "--image-size", "32", "--mean", "0.5,0.5,0.5",
                 "--std", "0.5,0.5,0.5", "--lambdas", "1e-4", "--epochs", "2", "--batch-size",
                 "12", "--out", str(out), "--no-progress", "--no-controls"]) == 0
    sub = sf.Subnetwork.load(out / "subnetwork.safetensors")
    reloaded = ViTForImageClassification.from_pretrained(model_dir)
    linear = {f"{n}.weight" for n, m in reloaded.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linear and linear <= set(sub.names())  # every linear layer was masked
    assert json.loads((out / "summary.json").read_text())["accuracy"] >= 0


def test_plan_memory_prints_a_table(capsys):
    from subind.commands import main as cli

    assert cli(["plan-memory", "--model", "timm:vit_tiny_patch16_224", "--model-kwargs",
                json.dumps(dict(img_size=32, patch_size=8, depth=2)), "--batch", "4",
                "--dtype", "fp32", "--providers", "ours,eager", "--gpu-mem", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["provider", "static", "GiB", "activations", "GiB", "peak", "GiB",
                                "fits", "largest", "batch"]
    ours = lines[3].split()
    assert ours[0] == "ours" and ours[4] == "yes" and int(ours[5]) > 4
    assert cli(["plan-memory", "--model", "timm:vit_tiny_patch16_224", "--batch", "4",
                "--world-size", "2"]) == 2


def test_arithmetic_rows_and_task_from_the_experiment(tmp_path):
    out = tmp_path / "mul"
    assert main(["discover", "--model",
                 "entry:subind.experiments.arithmetic.discovery_sets:quick_gpt2", "--weights",
                 "random", "--data", "experiment:arithmetic/a*b", "--include", "transformer.h.*",
                 "--lambdas", "1e-7", "--epochs", "1", "--batch-size", "500", "--out", str(out),
                 "--no-progress", "--no-controls"]) == 0
    sub = sf.Subnetwork.load(out / "subnetwork.safetensors")
    assert all(n.startswith("transformer.h.") for n in sub.names())
    assert len(_log(out, "1e-07")) == 1


@pytest.mark.parametrize("method", [["--method", "gumbel", "--n-samples", "2"],
                                    ["--method", "hard_concrete", "--granularity", "neuron"],
                                    ["--method", "continuous", "--granularity", "head"],
                                    ["--method", "magnitude", "--density", "0.3"],
                                    ["--method", "lottery_ticket", "--density", "0.1"]])
def test_discover_with_each_mask_method(tmp_path, method):
    out = tmp_path / "run"
    if method[1] == "lottery_ticket":  # "fine-tuned": the random model with a few weights moved
        from subind.experiments.arithmetic.discovery_sets import quick_gpt2

        before, after = quick_gpt2(), quick_gpt2()
        with torch.no_grad():
            after.transformer.h[0].mlp.c_fc.weight[:5] += 1.0
        torch.save(before.state_dict(), tmp_path / "before.pt")
        torch.save(after.state_dict(), tmp_path / "after.pt")
        method = [*method, "--pretrained-weights", str(tmp_path / "before.pt")]
    trained = method[1] in ("gumbel", "hard_concrete", "continuous")  # the selection methods take no λ
    assert main(["discover", "--model",
                 "entry:subind.experiments.arithmetic.discovery_sets:quick_gpt2", "--weights",
                 "random", "--data", "experiment:arithmetic/a*b", "--include", "transformer.h.*",
                 *(["--lambdas", "1e-7", "--epochs", "1"] if trained else []),
                 "--batch-size", "500", "--out", str(out), "--no-progress", "--no-controls",
                 *method]
                + (["--weights", str(tmp_path / "after.pt")] if "lottery_ticket" in method
                   else [])) == 0
    sub = sf.Subnetwork.load(out / "subnetwork.safetensors")
    assert sub.metadata["method"] == method[1]
    if method[1] == "lottery_ticket":  # the moved weights are the most-moved ones
        assert sub.mask("transformer.h.0.mlp.c_fc.weight")[:5].all()
    if method[1] == "magnitude":
        assert sub.density() == pytest.approx(0.3, abs=1e-3)
    if "neuron" in method:  # whole output units: every kept column of a Conv1D weight is full
        mask = sub.mask("transformer.h.0.mlp.c_fc.weight")
        assert torch.equal(mask.all(0), mask.any(0))
    if "head" in method:  # one bit per head of each q/k/v chunk, expanded over its columns
        c_attn = "transformer.h.0.attn.c_attn.weight"
        assert sub.metadata["granularity"] == "head"
        assert sub.unit_shape(c_attn)[1] == 3 * quick_heads() and sub.unit_mask(c_attn).numel() \
            == sub.unit_shape(c_attn).numel()


def quick_heads() -> int:
    from subind.experiments.arithmetic.discovery_sets import quick_gpt2

    return quick_gpt2().config.n_head


def test_analyze_scores_the_model_with_each_subnetwork_removed(tmp_path, capsys):
    import discover_entries

    model = discover_entries.block_mlp()
    files, weights = discover_entries.random_subnetwork_files(tmp_path, ("first", "second"),
                                                              0.4, seed=1)
    assert main(["analyze", *files, "--out", str(tmp_path / "a"), "--model",
                 "entry:discover_entries:block_mlp", "--weights", str(weights),
                 "--eval-data", "entry:discover_entries:gaussian_data"]) == 0
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.startswith("| first") or
            line.startswith("| second") or line.startswith("| – | intact")]
    assert len(rows) == 7  # intact + 3 removals × 2 subnetworks
    x, y = discover_entries.gaussian_data()["eval"].tensors
    intact = float((model(x).argmax(-1) == y).double().mean())
    assert f"| – | intact | {intact:.4f} |" in text


@pytest.mark.parametrize("ablation", ["mean", "corrupted"])
def test_analyze_removes_weights_under_an_ablation(tmp_path, capsys, ablation):
    import discover_entries

    model = discover_entries.block_mlp()
    masks = {f"{n}.weight": torch.rand(m.weight.shape, generator=torch.Generator().manual_seed(2))
             < 0.4 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    sub = sf.Subnetwork.from_masks(masks)
    file = str(sub.save(tmp_path / "s.safetensors"))
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    assert main(["analyze", file, "--out", str(tmp_path / "a"), "--model",
                 "entry:discover_entries:block_mlp", "--weights", str(weights),
                 "--eval-data", "entry:discover_entries:gaussian_data",
                 "--ablation", ablation]) == 0
    text = capsys.readouterr().out
    assert ("mean input" if ablation == "mean" else "resample") in text
    from torch.utils.data import DataLoader
    from subind.engine.classification import Classification

    eval_set = discover_entries.gaussian_data()["eval"]
    loader, task = DataLoader(eval_set, batch_size=512), Classification()
    expected = A.inverse_mask_test(model, sub, lambda m: task.evaluate(m, loader).accuracy,
                                   ablation=ablation, reference=loader, forward=task.loss)
    assert f"| s | without subnetwork | {expected['without subnetwork']:.4f} |" in text
    assert main(["analyze", file, "--out", str(tmp_path / "b"), "--ablation", "mean"]) == 2
    assert "--ablation chooses the inverse-mask test's removal" in capsys.readouterr().err


def test_discover_with_an_ablation_and_the_kl_objective(tmp_path):
    out = tmp_path / "run"
    assert main(["discover", *ENTRY, "--out", str(out), "--granularity", "head",
                 "--ablation", "learned", "--objective", "kl"]) == 0
    sub = sf.Subnetwork.load(out / "subnetwork.safetensors")
    assert (sub.metadata["ablation"], sub.metadata["objective"]) == ("learned", "kl")


def test_kernel_choice_is_recorded_and_finds_the_same_subnetwork(tmp_path):
    fused, eager = tmp_path / "fused", tmp_path / "eager"
    assert main(["discover", *ENTRY, "--out", str(fused)]) == 0
    assert main(["discover", *ENTRY, "--out", str(eager), "--kernels", "eager",
                 "--compile", "off"]) == 0
    summary = json.loads((eager / "summary.json").read_text())
    assert (summary["kernels"], summary["compiled"]) == ("eager", False)
    assert json.loads((fused / "summary.json").read_text())["kernels"] == "fused"
    assert sf.Subnetwork.load(fused / "subnetwork.safetensors") == \
        sf.Subnetwork.load(eager / "subnetwork.safetensors")


def test_discover_aims_at_a_target_density(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["discover", "--model", "entry:subind.experiments.arithmetic.discovery_sets:quick_gpt2",
            "--weights", "random", "--data", "experiment:arithmetic/a*b",
            "--include", "transformer.h.*", "--epochs", "2", "--batch-size", "500",
            "--no-progress", "--no-controls"]
    assert main([*args, "--target-density", "0.1", "--out", str(out)]) == 0
    sub = sf.Subnetwork.load(out / "subnetwork.safetensors")
    kept = sum(k for k, _ in sub.counts().values())
    total = sum(t for _, t in sub.counts().values())
    assert kept == round(0.1 * total)  # exactly the size asked for
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_density"] == 0.1 and len(summary["lagrange_multipliers"]) == 2
    for extra, message in [(["--lambdas", "1e-7"], "--lambdas would be ignored"),
                           (["--method", "magnitude", "--density", "0.1"], "selects --density"),
                           (["--target-warmup", "5"], "--target-warmup must be in")]:
        capsys.readouterr()
        assert main([*args, "--target-density", "0.1", *extra,
                     "--out", str(tmp_path / "bad")]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert main([*args, "--target-warmup", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "go with --target-density" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_discover_on_a_config_only_directory_with_random_weights(tmp_path, family):
    """hf:DIR holding only a config.json runs when random weights are asked for
    explicitly, and is refused without --weights (nothing is downloaded)."""
    from transformers import Gemma2Config, LlamaConfig

    from subind.experiments.arithmetic import data as A
    from subind.experiments.arithmetic.experiment import config_for

    quick = config_for("quick")
    vocab = A.Vocabulary(quick.n_numbers, quick.p).size
    gqa = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
               max_position_embeddings=8)
    config = LlamaConfig(**gqa) if family == "llama" else Gemma2Config(**gqa, head_dim=8)
    config.save_pretrained(tmp_path / family)
    args = ["discover", "--model", f"hf:{tmp_path / family}", "--data",
            "experiment:arithmetic/a*b", "--lambdas", "1e-7", "--epochs", "1",
            "--batch-size", "500", "--no-progress", "--no-controls"]
    assert main([*args, "--out", str(tmp_path / "none")]) == 2  # no weights, none asked for
    assert main([*args, "--weights", "random", "--out", str(tmp_path / "run")]) == 0
    sub = sf.Subnetwork.load(tmp_path / "run" / "subnetwork.safetensors")
    assert any(name.endswith("self_attn.k_proj.weight") for name in sub.names())
    assert any(name.endswith("mlp.gate_proj.weight") for name in sub.names())


def test_discover_runs_the_faithfulness_controls(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", "--model",
                 "entry:subind.experiments.arithmetic.discovery_sets:quick_gpt2",
                 "--weights", "random", "--data", "experiment:arithmetic/a*b",
                 "--include", "transformer.h.*", "--lambdas", "1e-7", "--epochs", "1",
                 "--batch-size", "500", "--no-progress", "--out", str(out)]) == 0  # by default
    controls = json.loads((out / "summary.json").read_text())["controls"]
    assert set(controls) == {"random_weights", "shuffled_labels"}
    assert all(0 <= c["accuracy"] <= 1 and 0 <= c["density"] <= 1 for c in controls.values())
    assert (out / "controls" / "shuffled_labels" / "discovery-lambda1e-07.csv").is_file()
    sub = sf.Subnetwork.load(out / "subnetwork.safetensors")
    assert sub.metadata["controls"] == controls  # analyze reads them from the file
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    margin = summary["accuracy"] - controls["shuffled_labels"]["accuracy"]
    assert f"| shuffled labels | {controls['shuffled_labels']['accuracy']:.4f} |" in text
    assert f"{margin:+.4f}" in text
    assert main(["analyze", str(out / "subnetwork.safetensors"), "--out", str(tmp_path / "a")]) \
        == 0
    assert f"| run | accuracy | density | the subnetwork's margin |" in capsys.readouterr().out


def test_controls_shuffle_labels_and_redraw_weights():
    from subind.engine.controls import ShuffledLabels, random_weight_copy

    pairs = [(torch.tensor([float(i)]), i) for i in range(50)]
    shuffled = ShuffledLabels(pairs, seed=0)
    assert sorted(shuffled[i][1] for i in range(50)) == list(range(50))  # a permutation
    assert sum(shuffled[i][1] == i for i in range(50)) < 5
    assert all(shuffled[i][0] == pairs[i][0] for i in range(50))  # inputs stay
    rows = ShuffledLabels([torch.tensor([i, 1, 2, i]) for i in range(20)], seed=1)
    assert sorted(int(rows[i][-1]) for i in range(20)) == list(range(20))
    assert all(int(rows[i][0]) == i for i in range(20))
    model = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.LayerNorm(30))
    copy = random_weight_copy(model, seed=0)
    w, c = model[0].weight.detach(), copy[0].weight.detach()
    assert not torch.equal(w, c) and abs(float(c.std() - w.std())) < 0.1 * float(w.std())
    assert torch.equal(copy[1].weight, model[1].weight)  # a constant tensor stays
