"""The vision experiment's discovery over several seeds (--discovery-seeds):
each seed's discovery of the shape subnetwork, their stability in the
stage folder and the report, and each transfer run given its own seed's
subnetwork — also when shard processes (--jobs) split the runs."""
import copy
import json

import pytest

import subind_fast as sf
from subind.commands import main as cli
from subind.engine.training import reestimate_batchnorm
from subind.experiments.vision.config import config_for
from subind.experiments.vision.experiment import VisionExperiment

SMOKE = ["vision", "--preset", "smoke", "--no-progress", "--archs", "resnet18",
         "--conditions", "subtask_induction,scratch"]


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [[], ["--jobs", "2"]])
def test_repeated_discovery_of_the_shape_subnetwork(tmp_path, jobs):
    out = tmp_path / "out"
    assert cli([*SMOKE, "--out", str(out), "--discovery-seeds", "0,1", "--seeds", "0,1",
                *jobs]) == 0
    stage = out / "subnetworks" / "resnet18"
    subs = {seed: sf.Subnetwork.load(stage / f"seed-{seed}.safetensors") for seed in (0, 1)}
    assert subs[0] != subs[1] and subs[0].metadata["seed"] == 0
    record = json.loads((stage / "stability.json").read_text())
    assert record["seeds"] == [0, 1]
    if not jobs:
        # alone: the adapted model with only the subnetwork, its BatchNorm statistics
        # re-estimated on the pooled images (the discovery trained them with the masks)
        experiment = VisionExperiment(config_for(
            "smoke", archs=["resnet18"], conditions=["subtask_induction", "scratch"],
            seeds=[0, 1], repeated_discovery=dict(discovery_seeds=[0, 1])), out,
            progress=False)
        task = experiment.task_for("resnet18")
        for name, sub in (("seed 0", subs[0]), ("core", subs[0] & subs[1])):
            model = sub.ablate(copy.deepcopy(experiment.adapted_model("resnet18")), "keep")
            assert reestimate_batchnorm(model, task, experiment.data.pooled())
            expected = task.evaluate(model, experiment.data.pooled_eval()).accuracy
            found = (record["per_seed"]["0"]["alone_accuracy"] if name == "seed 0"
                     else record["alone"]["core"]["accuracy"])
            assert found == pytest.approx(expected, abs=1e-12), name
    assert sf.Subnetwork.load(stage / "core.safetensors") == subs[0] & subs[1]
    for seed in (0, 1):
        run = json.loads((out / "runs" / "subtask_induction" / f"resnet18-N0-s{seed}.json")
                         .read_text())
        assert run["subnetwork"] == f"seed {seed}"
        assert run["frozen_fraction"] == subs[seed].density()
    assert cli(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "### resnet18: seed stability over 2 seeds (0, 1)" in report
    assert "| resnet18, discovery seed 1 |" in report
    if not jobs:  # discovery seed 0 is the single discovery with the default --seed 0
        single = tmp_path / "single"
        assert cli([*SMOKE, "--out", str(single), "--seeds", "0"]) == 0
        assert sf.Subnetwork.load(single / "subnetworks" / "resnet18.safetensors") == subs[0]
