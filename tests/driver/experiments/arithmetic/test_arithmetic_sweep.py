"""Sweeps never mix or lose results: a results directory records its
configuration and refuses another, damaged records and checkpoints are moved
aside and redone, logs have no duplicate rows after a resume, concurrent
shards never write the same file, every argument is checked before training,
and a report names a malformed record's file."""
import json
import subprocess
import sys
import warnings

import pytest

import subind_fast as sf
from subind.commands import main as cli
from subind.engine import manifest
from subind.engine.files import locked
from subind.experiments.arithmetic.experiment import ArithmeticExperiment, config_for

SMOKE = ["arithmetic", "--preset", "smoke", "--no-progress"]


def _smoke(out, *extra):
    return cli([*SMOKE, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished smoke sweep (6 runs), shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("smoke")
    assert _smoke(out) == 0
    return out


def _copy(finished, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("change, fields", [
    (["--target", "a^2+b^2"], ["target"]),
    (["--p", "5"], ["p"]),
    (["--transfer-lr", "0.01", "--n-numbers", "40"], ["n_numbers", "transfer_lr"]),
])
def test_a_different_configuration_is_refused_naming_the_fields(finished, tmp_path, change,
                                                                 fields, capsys):
    out = _copy(finished, tmp_path)
    before = sorted(p.name for p in out.rglob("*"))
    assert _smoke(out, *change) == 2
    err = capsys.readouterr().err
    assert f"{len(fields)} field(s) differ" in err
    for name in fields:
        assert f"{name}: directory" in err
    assert sorted(p.name for p in out.rglob("*")) == before  # nothing trained or written


@pytest.mark.slow
def test_another_preset_is_refused_and_the_grid_may_grow(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    assert cli(["arithmetic", "--preset", "quick", "--out", str(out), "--no-progress"]) == 2
    assert "field(s) differ" in capsys.readouterr().err
    assert _smoke(out, "--seeds", "0,1", "--n-disambiguation", "0") == 0  # same experiment, more seeds
    assert "3 runs done now, 3 already present" in capsys.readouterr().out  # seed 1 is new


def test_a_directory_of_another_experiment_or_without_manifest_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "stray.txt").write_text("x")
    with pytest.raises(ValueError, match="holds files but no manifest.json"):
        ArithmeticExperiment(config_for("smoke"), tmp_path / "a", progress=False)
    manifest.claim(tmp_path / "b", "vision", {"x": 1})
    with pytest.raises(ValueError, match="holds the 'vision' experiment"):
        ArithmeticExperiment(config_for("smoke"), tmp_path / "b", progress=False)


@pytest.mark.slow
def test_damaged_records_and_checkpoints_are_moved_aside_and_redone(finished, tmp_path):
    out = _copy(finished, tmp_path)
    runs = sorted((out / "runs").rglob("*.json"))
    runs[0].write_text('{"condition": "scr')                       # a half-written file
    record = json.loads(runs[1].read_text())
    del record["test_accuracy"]
    runs[1].write_text(json.dumps(record))                          # a field missing
    record = json.loads(runs[2].read_text())
    record["seed"] = 99
    runs[2].write_text(json.dumps(record))                          # another run's record
    (out / "base" / "L1" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.warns(UserWarning, match="moved aside") as caught:
        result = ArithmeticExperiment(config_for("smoke"), out, progress=False).run()
    assert len(result.written) == 3 and result.present == 3
    assert len(caught) == 4
    assert len(list(out.rglob("*.corrupt-*"))) == 4
    for path in runs[:3]:
        assert json.loads(path.read_text())["test_accuracy"] >= 0


@pytest.mark.slow
def test_a_resumed_run_logs_each_epoch_once(tmp_path, monkeypatch, finished):
    from subind.engine import training

    out = tmp_path / "out"
    real_write = training.EpochLog.write
    calls = {"n": 0}

    def crash_midway(self, **values):
        real_write(self, **values)
        if "runs" in str(self.path):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # killed after the third epoch of the first run

    monkeypatch.setattr(training.EpochLog, "write", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        ArithmeticExperiment(config_for("smoke"), out, progress=False).run()
    monkeypatch.setattr(training.EpochLog, "write", real_write)
    ArithmeticExperiment(config_for("smoke"), out, progress=False).run()
    epochs = config_for("smoke").transfer_epochs
    for log in (out / "runs").rglob("*.csv"):
        rows = log.read_text().splitlines()
        assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in range(epochs)], log
    # ... and ends with the uninterrupted sweep's results, bit for bit.
    from subind.experiments.arithmetic.experiment import RECORD_FIELDS

    def records(folder):
        return {str(p.relative_to(folder)): {k: json.loads(p.read_text())[k]
                                             for k in RECORD_FIELDS}
                for p in (folder / "runs").rglob("*.json")}

    assert records(out) == records(finished)
    assert sf.Subnetwork.load(out / "subnetworks" / "L1.safetensors") == \
        sf.Subnetwork.load(finished / "subnetworks" / "L1.safetensors")


@pytest.mark.slow
def test_a_run_held_by_another_process_is_left_to_it(tmp_path):
    out = tmp_path / "out"
    exp = ArithmeticExperiment(config_for("smoke"), out, progress=False)
    held = exp.run_path(*exp.grid()[0])
    with locked(held):  # as if another shard were running it now
        result = exp.run()
    assert result.elsewhere == [held] and not held.exists() and len(result.written) == 5


@pytest.mark.slow
def test_two_processes_on_one_grid_do_each_run_once(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "subind", *SMOKE, "--out", str(out)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    done = [int(o.split(" runs done now")[0].split()[-1]) for o, _ in outputs]
    assert sum(done) == 6  # every run trained by exactly one of them
    assert len(list((out / "runs").rglob("*.json"))) == 6
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.corrupt-*"))


@pytest.mark.parametrize("args, message", [
    (["--seeds", "-1"], "seeds must be integers >= 0"),
    (["--seeds", "1,1"], "seeds lists a value twice"),
    (["--device", "cuda"], "no CUDA device is available"),
    (["--device", "tpu"], "is not a torch device"),
    (["--transfer-lr", "0"], "transfer_lr must be a positive number"),
    (["--base-max-epochs", "0"], "base_max_epochs must be a positive integer"),
    (["--n-numbers", "5"], "n_numbers must be an integer >= p"),
    (["--lambdas=-1e-7"], "--lambdas must be finite positive numbers"),
    (["--target-density", "1.5"], "--target-density"),
    (["--method", "magnitude"], "--method magnitude needs --density"),
    (["--method", "magnitude", "--density", "0.1", "--mask-lr", "1"],
     "--mask-lr would be ignored"),
    (["--target-density", "0.1", "--lambdas", "1e-7"], "--lambdas would be ignored"),
    (["--include", "nothing.*"], "include pattern 'nothing.*' matches no maskable layer"),
    (["--n-samples", "999", "--method", "hard_concrete"], "--n-samples 999"),
    (["--layers", "0"], "layers must be integers >= 1"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, args, message, capsys):
    out = tmp_path / "out"
    assert _smoke(out, *args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_cli_exposes_number_range_epochs_and_learning_rates():
    from subind.commands import arithmetic
    from subind.engine.options import parse

    parsed = parse(arithmetic.OPTIONS, ["--out", "x", "--n-numbers", "1000",
                                        "--base-max-epochs", "3", "--base-lr", "0.002",
                                        "--discovery-epochs", "7", "--mask-lr", "0.01",
                                        "--transfer-epochs", "9", "--transfer-lr", "0.0005",
                                        "--lambdas", "1e-7,5e-7"],
                   prog="subind arithmetic", description="", presets=arithmetic.PRESETS,
                   default_preset="quick")
    cfg = parsed.experiment.validate()
    d = cfg.discovery
    assert (cfg.n_numbers, cfg.base_max_epochs, cfg.base_lr, d.epochs, d.mask_lr,
            cfg.transfer_epochs, cfg.transfer_lr, d.lambdas) == (
        1000, 3, 0.002, 7, 0.01, 9, 0.0005, [1e-7, 5e-7])
    assert cfg.subtask_samples == config_for("quick").subtask_samples  # the rest: the preset's


def test_every_discovery_setting_of_discover_is_an_arithmetic_option(tmp_path):
    """The experiment's discovery is `subind discover`'s own Discovery, flags and
    config-file keys included, not a copy of some of its fields."""
    import dataclasses

    from subind.commands import arithmetic
    from subind.engine.options import given_names, option_fields, parse
    from subind.engine.protocol import Discovery

    options = option_fields(arithmetic.OPTIONS["experiment"])
    assert {f.name for f in dataclasses.fields(Discovery)} <= set(options)
    config = tmp_path / "c.yaml"
    config.write_text("target_density: 0.0768\ndiscovery_epochs: 15\nablation: mean\n")
    parsed = parse(arithmetic.OPTIONS, ["--out", "x", "--config", str(config), "--granularity",
                                        "neuron", "--mask-optimizer", "adamw"],
                   prog="subind arithmetic", description="", presets=arithmetic.PRESETS,
                   default_preset="quick")
    d = parsed.experiment.discovery
    assert (d.target_density, d.epochs, d.ablation, d.granularity, d.optimizer) == (
        0.0768, 15, "mean", "neuron", "adamw")
    assert d.lambdas == config_for("quick").discovery.lambdas  # untouched: the preset's
    assert {"target_density", "epochs", "ablation", "granularity", "optimizer"} <= parsed.given
    assert given_names([arithmetic.OPTIONS["experiment"]], ["--discovery-epochs=3"]) == {"epochs"}
    identity = parsed.experiment.identity()
    assert identity["discovery.target_density"] == 0.0768 and "discovery" not in identity


@pytest.mark.parametrize("args", [["--target-density", "0.3"], ["--ablation", "corrupted"],
                                  ["--method", "lottery_ticket", "--density", "0.2"]])
def test_discovery_settings_reach_the_discovered_subnetwork(tmp_path, args):
    out = tmp_path / "out"
    assert _smoke(out, "--conditions", "subtask_induction", "--n-disambiguation", "0",
                  *args) == 0
    sub = sf.Subnetwork.load(out / "subnetworks" / "L1.safetensors")
    if "--target-density" in args:
        assert sub.metadata["target_density"] == pytest.approx(0.3)
        assert sub.density() == pytest.approx(0.3, abs=1e-3)
        assert cli(["report", str(out)]) == 0  # the size's origin, not a λ of 0
        assert "| 1 | – | 30.00% |" in (out / "report.md").read_text()
        assert "target density 0.3 |" in (out / "report.md").read_text()
    elif "--ablation" in args:
        assert sub.metadata["ablation"] == "corrupted"
    else:
        assert sub.metadata["method"] == "lottery_ticket"
        assert sub.density() == pytest.approx(0.2, abs=1e-3)
    assert set(sub.counts()) == {f"transformer.h.0.{p}.weight" for p in (
        "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


@pytest.mark.slow
def test_report_names_the_file_of_a_malformed_record(finished, tmp_path, capsys):
    out = _copy(finished, tmp_path)
    bad = sorted((out / "runs").rglob("*.json"))[-1]
    record = json.loads(bad.read_text())
    del record["n_disambiguation"]
    bad.write_text(json.dumps(record))
    assert cli(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "missing fields ['n_disambiguation']" in err
    assert bad.exists()  # a report reads; it never moves results
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bad.write_text("{")
        assert cli(["report", str(out)]) == 2


@pytest.mark.slow
def test_local_launcher_runs_the_grid_as_parallel_shards(tmp_path, capsys):
    out = tmp_path / "out"
    assert _smoke(out, "--jobs", "2") == 0
    printed = capsys.readouterr().out
    assert "running 2 shards in parallel" in printed
    assert printed.count(": ok: ") == 2
    assert len(list((out / "runs").rglob("*.json"))) == 6
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs == ["shard-0-of-2.log", "shard-1-of-2.log"]
    assert _smoke(out, "--jobs", "2", "--shard", "0/2") == 2
    assert "--jobs and --shard" in capsys.readouterr().err


def _records(out):
    """Every JSON record of a results directory, without what a clock says."""
    timing = {"seconds", "versions"}
    return {str(p.relative_to(out)): {k: v for k, v in json.loads(p.read_text()).items()
                                      if k not in timing}
            for p in sorted(out.rglob("*.json"))}


def test_the_same_command_twice_gives_identical_records(finished, tmp_path):
    """Defect 16: a run is reproducible on one machine (same command, same
    thread count): every record and the subnetwork, bit for bit — and the
    smoke preset's subnetwork is not empty."""
    import subind_fast as sf

    again = tmp_path / "again"
    assert _smoke(again) == 0
    first, second = _records(finished), _records(again)
    assert first.keys() == second.keys() and len(first) >= 8
    for name in first:
        assert first[name] == second[name], name
    subnetwork = json.loads((finished / "subnetworks" / "L1.json").read_text())
    assert subnetwork["density"] > 0.05
    assert sf.Subnetwork.load(finished / "subnetworks" / "L1.safetensors") == \
        sf.Subnetwork.load(again / "subnetworks" / "L1.safetensors")
