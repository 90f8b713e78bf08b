"""`subind discover --seeds`: one whole discovery per seed, then how alike the
subnetworks are against chance, the core and majority scored alone — in the
results directory, in every subnetwork file's metadata and in `subind report`."""
import json

import pytest
import torch

import subind_fast as sf
from subind_fast import analysis as A
from subind.commands import main

ENTRY = ["--model", "entry:discover_entries:block_mlp", "--data",
         "entry:discover_entries:gaussian_data", "--lambdas", "1e-4", "--epochs", "3",
         "--batch-size", "32", "--mask-lr", "0.05", "--mask-init", "0.05", "--dtype", "fp64",
         "--no-progress", "--no-controls"]


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeds") / "run"
    assert main(["discover", *ENTRY, "--seeds", "0,1,2", "--out", str(out)]) == 0
    return out


def test_each_seed_is_the_discovery_that_seed_gives_alone(three_seeds, tmp_path):
    assert main(["discover", *ENTRY, "--seed", "1", "--out", str(tmp_path / "one")]) == 0
    alone = sf.Subnetwork.load(tmp_path / "one" / "subnetwork.safetensors")
    assert sf.Subnetwork.load(three_seeds / "seed-1" / "subnetwork.safetensors") == alone
    subs = [sf.Subnetwork.load(three_seeds / f"seed-{k}" / "subnetwork.safetensors")
            for k in range(3)]
    assert subs[0] != subs[1]  # another data order and initial draw: another subnetwork


def test_the_record_matches_the_subnetworks(three_seeds):
    record = json.loads((three_seeds / "stability.json").read_text())
    subs = {f"seed {k}": sf.Subnetwork.load(three_seeds / f"seed-{k}" / "subnetwork.safetensors")
            for k in range(3)}
    assert record["seeds"] == [0, 1, 2] and len(record["pairs"]) == 3
    for pair in record["pairs"]:
        a, b = subs[pair["a"]], subs[pair["b"]]
        assert pair["iou"] == pytest.approx(A.overlap(a, b)[A.TOTAL].iou, abs=1e-12)
        assert pair["chance_iou"] == pytest.approx(A.chance_overlap(a, b).iou, abs=1e-12)
    core = sf.Subnetwork.load(three_seeds / "core.safetensors")
    majority = sf.Subnetwork.load(three_seeds / "majority.safetensors")
    assert core == subs["seed 0"] & subs["seed 1"] & subs["seed 2"]
    assert majority == A.votes(list(subs.values()), 2)
    assert record["alone"]["core"]["density"] == pytest.approx(core.density())
    for row in record["per_seed"].values():
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["alone_accuracy"] == pytest.approx(row["accuracy"], abs=1e-12)  # no BN
    # Every file carries the summary.
    for sub in (core, majority, *(sf.Subnetwork.load(three_seeds / f"seed-{k}" /
                                                     "subnetwork.safetensors")
                                  for k in range(3))):
        assert sub.metadata["stability"]["seeds"] == [0, 1, 2]
    assert (three_seeds / "stability-iou.png").stat().st_size > 0
    assert (three_seeds / "stability-blocks.csv").read_text().count("\n") > 3


def test_the_majority_scored_alone_is_the_model_with_only_its_weights(three_seeds):
    """The record's accuracy of the majority subnetwork is the model with
    every other masked weight zeroed, scored on the evaluation data."""
    import discover_entries
    from subind.engine.classification import Classification

    record = json.loads((three_seeds / "stability.json").read_text())
    majority = sf.Subnetwork.load(three_seeds / "majority.safetensors")
    model = discover_entries.block_mlp().double()
    scored = majority.ablate(model, "keep")
    task = Classification(input_dtype=torch.float64)
    batches = torch.utils.data.DataLoader(discover_entries.gaussian_data()["eval"],
                                          batch_size=128)
    assert task.evaluate(scored, batches).accuracy == pytest.approx(
        record["alone"]["majority"]["accuracy"], abs=1e-12)


def test_with_trained_batchnorm_statistics_alone_re_estimates_them(tmp_path):
    """--bn-stats batch trains the statistics with the masks, so each seed's
    subnetwork, the core and the majority are scored alone with statistics
    re-estimated on the training data (the module's BatchNorm layer)."""
    import discover_entries
    from subind.engine.classification import Classification
    from subind.engine.training import reestimate_batchnorm

    out = tmp_path / "bn"
    entry = [word if word != "entry:discover_entries:block_mlp" else
             "entry:discover_entries:batchnorm_mlp" for word in ENTRY]
    assert main(["discover", *entry, "--bn-stats", "batch", "--seeds", "0,1",
                 "--out", str(out)]) == 0
    record = json.loads((out / "stability.json").read_text())
    task = Classification(input_dtype=torch.float64)
    data = discover_entries.gaussian_data()
    for seed in (0, 1):
        sub = sf.Subnetwork.load(out / f"seed-{seed}" / "subnetwork.safetensors")
        model = sub.ablate(discover_entries.batchnorm_mlp().double(), "keep")
        assert reestimate_batchnorm(model, task, torch.utils.data.DataLoader(data["train"],
                                                                            batch_size=128))
        expected = task.evaluate(model, torch.utils.data.DataLoader(data["eval"],
                                                                    batch_size=128)).accuracy
        assert record["per_seed"][str(seed)]["alone_accuracy"] == pytest.approx(expected,
                                                                                abs=1e-12)


def test_report_shows_stability_then_each_seed(three_seeds, capsys):
    assert main(["report", str(three_seeds)]) == 0
    text = capsys.readouterr().out
    assert "## seed stability over 3 seeds (0, 1, 2)" in text
    assert "chance IoU (random masks, same sizes)" in text and "| core (kept by every seed)" in text
    assert text.count("## discovery in") == 3


@pytest.mark.parametrize("extra, message", [
    (["--seeds", "3"], "at least two seeds"),
    (["--seeds", "1,1"], "--seeds lists a value twice"),
    (["--seeds", "0,1", "--seed", "4"], "leave out --seed"),
    (["--seeds", "0,-1"], "--seeds must be integers >= 0"),
    (["--seeds", "0,1", "--weights", "/nonexistent.safetensors"], "/nonexistent.safetensors"),
])
def test_bad_seed_lists_are_refused(extra, message, tmp_path, capsys):
    assert main(["discover", *ENTRY, *extra, "--out", str(tmp_path / "bad")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
