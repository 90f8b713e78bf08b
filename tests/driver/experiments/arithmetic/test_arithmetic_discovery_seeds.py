"""The arithmetic experiment's discovery over several seeds
(--discovery-seeds, engine/discovery_seeds.py): one discovery per seed, each
drawn from its seed, their stability written and reported, and the
subnetwork each transfer run receives the one --transfer-subnetwork names."""
import json

import pytest
import torch

import subind_fast as sf
from subind.commands import main as cli
from subind.experiments.arithmetic.experiment import ArithmeticExperiment, config_for

SMOKE = ["arithmetic", "--preset", "smoke", "--no-progress", "--n-disambiguation", "0"]


def _run(out, *extra):
    return cli([*SMOKE, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def matched(tmp_path_factory):
    """Discovery seeds 0, 1, 2; transfer seeds 0 and 1, each with its own seed's subnetwork."""
    out = tmp_path_factory.mktemp("matched")
    assert _run(out, "--discovery-seeds", "0,1,2", "--seeds", "0,1") == 0
    return out


def _records(out):
    return {(r["condition"], r["seed"]): r for r in
            (json.loads(p.read_text()) for p in (out / "runs").rglob("*.json"))}


def test_each_seed_is_its_own_discovery_and_seed_0_is_the_single_one(matched, tmp_path):
    stage = matched / "subnetworks" / "L1"
    subs = {seed: sf.Subnetwork.load(stage / f"seed-{seed}.safetensors") for seed in (0, 1, 2)}
    assert [subs[seed].metadata["seed"] for seed in (0, 1, 2)] == [0, 1, 2]
    # the seed draws the data order: the masks differ, but not by much
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert subs[a] != subs[b]
    # discovery seed 0 is exactly what one discovery with --seed 0 (the default) finds
    single = tmp_path / "single"
    assert _run(single, "--conditions", "subtask_induction", "--seeds", "0") == 0
    assert sf.Subnetwork.load(single / "subnetworks" / "L1.safetensors") == subs[0]


def test_stability_files_metadata_and_report(matched):
    stage = matched / "subnetworks" / "L1"
    record = json.loads((stage / "stability.json").read_text())
    assert record["seeds"] == [0, 1, 2] and len(record["pairs"]) == 3
    assert record["mean_iou"]["mean"] > record["mean_chance_iou"]["mean"]
    subs = [sf.Subnetwork.load(stage / f"seed-{seed}.safetensors") for seed in (0, 1, 2)]
    core, majority = (sf.Subnetwork.load(stage / f"{name}.safetensors")
                      for name in ("core", "majority"))
    assert core == subs[0] & subs[1] & subs[2]
    assert majority == (subs[0] & subs[1]) | (subs[0] & subs[2]) | (subs[1] & subs[2])
    for sub in (*subs, core, majority):
        assert sub.metadata["stability"]["seeds"] == [0, 1, 2]
    for seed, sub in zip((0, 1, 2), subs):
        row = record["per_seed"][str(seed)]
        assert row["accuracy"] == sub.metadata["subtask_accuracy"]
        assert row["density"] == pytest.approx(sub.density())
        # no state besides the masks was trained: alone, it scores what its discovery did
        assert row["alone_accuracy"] == pytest.approx(row["accuracy"], abs=1e-12)
    # the core alone, scored by hand: every other masked weight zeroed
    experiment = ArithmeticExperiment(config_for("smoke", n_disambiguation=[0],
                                                 seeds=[0, 1], repeated_discovery=dict(
                                                     discovery_seeds=[0, 1, 2])),
                                      matched, progress=False)
    base = experiment.base_model(1)
    scored = experiment.task.evaluate(core.ablate(base, "keep"),
                                      experiment._eval(experiment._discovery_eval_rows()))
    assert record["alone"]["core"]["accuracy"] == pytest.approx(scored.accuracy, abs=1e-12)
    assert cli(["report", str(matched)]) == 0
    report = (matched / "report.md").read_text()
    assert "### L1: seed stability over 3 seeds (0, 1, 2)" in report
    assert "| 1 | 2 |" in report  # the density table's row of discovery seed 2
    assert "subnetworks/L1/stability-iou.png" in report
    assert ("transfer runs received: seed 0 (2 runs), seed 1 (2 runs)") in report


def test_matched_runs_transfer_their_own_seeds_subnetwork(matched):
    records = _records(matched)
    stage = matched / "subnetworks" / "L1"
    for seed in (0, 1):
        sub = sf.Subnetwork.load(stage / f"seed-{seed}.safetensors")
        record = records[("subtask_induction", seed)]
        assert record["subnetwork"] == f"seed {seed}"
        assert record["frozen_fraction"] == sub.density()  # the transferred set's size
        assert records[("random", seed)]["subnetwork"] == f"seed {seed}"
        assert records[("scratch", seed)]["subnetwork"] is None


@pytest.mark.parametrize("choice", ["core", "first"])
def test_core_and_first_transfer_that_subnetwork_to_every_run(matched, tmp_path, choice):
    out = tmp_path / choice
    assert _run(out, "--discovery-seeds", "0,1,2", "--seeds", "0,1", "--transfer-subnetwork",
                choice, "--conditions", "subtask_induction") == 0
    expected = "core" if choice == "core" else "seed 0"
    wanted = sf.Subnetwork.load(out / "subnetworks" / "L1" / (
        "core.safetensors" if choice == "core" else "seed-0.safetensors"))
    experiment = ArithmeticExperiment(config_for(
        "smoke", n_disambiguation=[0], seeds=[0, 1], conditions=["subtask_induction"],
        repeated_discovery=dict(discovery_seeds=[0, 1, 2], transfer_subnetwork=choice)),
        out, progress=False)
    for seed in (0, 1):
        assert _records(out)[("subtask_induction", seed)]["subnetwork"] == expected
        _, sub, label = experiment._stages_for("subtask_induction", 1, seed)
        assert label == expected and sub == wanted
    # the same stages as the matched directory's: same base model, same seeds' discoveries
    assert sf.Subnetwork.load(out / "subnetworks" / "L1" / "core.safetensors") == \
        sf.Subnetwork.load(matched / "subnetworks" / "L1" / "core.safetensors")


def test_a_finished_repeated_discovery_is_reused_and_another_refused(matched, capsys):
    stage = matched / "subnetworks" / "L1"
    before = {p: p.stat().st_mtime_ns for p in stage.iterdir() if p.is_file()}
    assert _run(matched, "--discovery-seeds", "0,1,2", "--seeds", "0,1") == 0
    assert {p: p.stat().st_mtime_ns for p in stage.iterdir() if p.is_file()} == before
    assert _run(matched, "--discovery-seeds", "0,1", "--seeds", "0,1") == 2
    assert "repeated_discovery.discovery_seeds: directory [0, 1, 2], now [0, 1]" in \
        capsys.readouterr().err
    assert _run(matched, "--seeds", "0,1") == 2  # nor the single discovery
    assert "repeated_discovery.discovery_seeds: directory [0, 1, 2], now null" in \
        capsys.readouterr().err


def test_without_discovery_seeds_the_manifest_is_as_before():
    """A results directory from before --discovery-seeds existed still resumes."""
    identity = config_for("smoke").identity()
    assert not any(key.startswith("repeated_discovery") for key in identity)
    repeated = config_for("smoke", repeated_discovery=dict(discovery_seeds=[0, 1])).identity()
    assert repeated["repeated_discovery.discovery_seeds"] == [0, 1]
    assert repeated["repeated_discovery.transfer_subnetwork"] == "matched"


@pytest.mark.parametrize("args, message", [
    (["--discovery-seeds", "3"], "--discovery-seeds needs at least two seeds"),
    (["--discovery-seeds", "0,0"], "--discovery-seeds lists a value twice"),
    (["--discovery-seeds", "0,1", "--seed", "4"], "leave out --seed"),
    (["--discovery-seeds", "1,2"], "seeds [0] are not among --discovery-seeds [1, 2]"),
    (["--transfer-subnetwork", "core"], "give --discovery-seeds too"),
    (["--discovery-seeds", "0,1", "--method", "magnitude", "--density", "0.1"],
     "every seed would select the same ones"),
    (["--discovery-seeds", "0,1", "--conditions", "scratch"],
     "none of the conditions ['scratch'] transfers a subnetwork"),
    (["--discovery-seeds", "0,1", "--transfer-subnetwork", "all"], "invalid choice 'all'"),
])
def test_bad_discovery_seed_options_are_refused_before_anything_is_written(tmp_path, args,
                                                                           message, capsys):
    out = tmp_path / "out"
    assert _run(out, *args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
