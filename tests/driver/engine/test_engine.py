"""The generic engine on its own: atomic files and locks, the manifest, run
records, the sweep, the training loop over any iterable of batches, and the
discovery/transfer protocol — with toy models and data, no experiment."""
import json
import multiprocessing as mp
import os
import time

import pytest
import torch
from torch import nn

import subind_fast as sf
from subind.engine import files, manifest, records
from subind.engine.protocol import (CONDITIONS, Discovery, chosen_subnetwork, discover,
                                   transfer_condition)
from subind.engine.sweep import Sweep, cached_stage, parse_shard
from subind.engine.training import Metrics, TensorBatches, train


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "a" / "x.json"
    files.atomic_write_json(target, {"v": 1})

    def failing(tmp):
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        files.atomic_write(target, failing)
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]


def test_create_exclusively_lets_one_writer_win(tmp_path):
    assert files.create_exclusively(tmp_path / "m", "first")
    assert not files.create_exclusively(tmp_path / "m", "second")
    assert (tmp_path / "m").read_text() == "first"


def _hold(path, ready, release):
    with files.locked(path):
        ready.set()
        release.wait(30)


def test_a_lock_held_by_another_process_is_seen(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path / "run.json", ready, release))
    holder.start()
    assert ready.wait(30)
    with files.locked(tmp_path / "run.json", wait=False) as mine:
        assert not mine
    release.set()
    holder.join(30)
    with files.locked(tmp_path / "run.json", wait=False) as mine:
        assert mine  # released when the holder ended
    # The holder removes its lock file before letting go: nothing is left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_files_written_atomically_take_the_umask_not_0600(tmp_path):
    files.atomic_write_text(tmp_path / "a.txt", "x")
    files.create_exclusively(tmp_path / "b.txt", "y")
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    for name in ("a.txt", "b.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected


def _lock_and_count(path, counter, rounds):
    for _ in range(rounds):
        with files.locked(path):
            value = int(counter.read_text() or 0)
            counter.write_text(str(value + 1))


def test_locks_that_remove_their_files_still_exclude_each_other(tmp_path):
    """Each holder deletes the lock file on release; a waiter that locked the
    deleted file must notice and lock the new one, or two would hold it."""
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = mp.get_context("fork")
    workers = [ctx.Process(target=_lock_and_count, args=(tmp_path / "x", counter, 200))
               for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * 4
    assert counter.read_text() == "800"
    assert not (tmp_path / ".x.lock").exists()


def test_manifest_refuses_other_configurations_and_experiments(tmp_path):
    manifest.claim(tmp_path, "toy", {"lr": 0.1, "width": 8})
    manifest.claim(tmp_path, "toy", {"width": 8, "lr": 0.1})  # same, any order
    with pytest.raises(ValueError, match=r"1 field\(s\) differ: lr: directory 0.1, now 0.2"):
        manifest.claim(tmp_path, "toy", {"lr": 0.2, "width": 8})
    with pytest.raises(ValueError, match="holds the 'toy' experiment, not 'other'"):
        manifest.claim(tmp_path, "other", {})
    assert manifest.read(tmp_path)["experiment"] == "toy"
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="damaged or unknown manifest"):
        manifest.read(tmp_path)


def _claim_many(out, start, failures):
    start.wait(30)
    for _ in range(3):
        try:
            manifest.claim(out, "toy", {"lr": 0.1})
        except ValueError as err:
            failures.put(str(err))


def test_manifest_claims_racing_on_an_empty_directory_all_succeed(tmp_path, monkeypatch):
    # The CI failure this guards: one process's temp or lock file seen by another as foreign
    # files.  A slow link widens the window in which the temp file exists without the manifest.
    link = os.link
    monkeypatch.setattr(os, "link", lambda *a, **k: (time.sleep(0.05), link(*a, **k))[1])
    ctx = mp.get_context("fork")
    start, failures = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_many, args=(tmp_path / "out", start, failures))
             for _ in range(6)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(60)
    assert all(proc.exitcode == 0 for proc in procs)
    assert failures.empty(), failures.get()
    assert manifest.read(tmp_path / "out")["config"] == {"lr": 0.1}
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.csv").write_text("x")
    with pytest.raises(ValueError, match="already holds files but no manifest.json"):
        manifest.claim(tmp_path / "other", "toy", {})


def test_records_are_validated_and_damaged_ones_moved_aside(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"seed": 1, "acc": 0.5}))
    assert records.read(path, ["acc"], {"seed": 1}) == {"seed": 1, "acc": 0.5}
    with pytest.warns(UserWarning, match="do not match its file name"):
        assert records.read(path, ["acc"], {"seed": 2}) is None
    assert not path.exists() and len(list(tmp_path.glob("r.json.corrupt-*"))) == 1


def test_sweep_runs_each_key_once_and_shards_partition_the_grid(tmp_path):
    keys = [(c, s) for c in ("a", "b") for s in range(3)]
    sweep = Sweep(keys, ("cond", "seed"), ("cond", "seed", "value"),
                  lambda k: tmp_path / k[0] / f"s{k[1]}.json")
    done = []

    def execute(key):
        done.append(key)
        return {"value": key[1] * 10}

    first = sweep.run(execute, shard=(0, 2))
    assert done[:3] == keys[0::2]  # its own runs first, then the other shard's
    assert sorted(done) == sorted(keys) and len(first) == 6
    second = sweep.run(execute, shard=(1, 2))
    assert len(second) == 0 and second.present == 3  # its own, done by the first
    again = sweep.run(execute)
    assert len(again) == 0 and again.present == 6
    assert json.loads((tmp_path / "b" / "s2.json").read_text()) == {"cond": "b", "seed": 2,
                                                                   "value": 20}
    with pytest.raises(ValueError, match="twice"):
        Sweep(keys + keys[:1], ("cond", "seed"), (), lambda k: tmp_path)
    assert parse_shard("1/4") == (1, 4)


def test_a_shard_turns_to_other_runs_while_another_process_builds_a_stage(tmp_path):
    import contextlib

    from subind.engine.files import locked

    artifact = tmp_path / "stage.txt"
    elsewhere = contextlib.ExitStack()
    elsewhere.enter_context(locked(artifact))  # another process is building the stage
    order = []

    def build(path):
        path.write_text("built")
        return "built", {}

    def execute(key):
        if key == ("a-needs-the-stage",):
            order.append((key[0], cached_stage(artifact, lambda p: p.read_text(), build)))
        else:
            order.append(key[0])
            elsewhere.close()  # the other process lets go (without finishing the stage)
        return {}

    sweep = Sweep([("a-needs-the-stage",), ("b-needs-nothing",)], ("name",), ("name",),
                  lambda key: tmp_path / f"{key[0]}.json")
    result = sweep.run(execute)
    assert order == ["b-needs-nothing", ("a-needs-the-stage", "built")] and len(result) == 2


def test_cached_stage_builds_once_and_rebuilds_a_damaged_artifact(tmp_path):
    builds = []

    def build(path):
        builds.append(1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("42")
        return 42, {"built": True}

    def load(path):
        return int(path.read_text())

    artifact = tmp_path / "stage" / "thing.txt"
    assert cached_stage(artifact, load, build) == 42
    assert cached_stage(artifact, load, build) == 42 and len(builds) == 1
    artifact.write_text("not a number")
    with pytest.warns(UserWarning, match="unreadable"):
        assert cached_stage(artifact, load, build) == 42
    assert len(builds) == 2


class _Classify:
    """A task over (x, y) batches."""

    def loss(self, model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model, data):
        correct = total = 0
        loss = 0.0
        for x, y in data:
            out = model(x)
            loss += nn.functional.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
        return Metrics(loss / total, correct / total)


def _toy(n=512, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = (x[:, 0] > 0).long()  # a subtask: the sign of one feature
    return x, y


def test_train_accepts_a_dataloader_and_tensor_batches_alike():
    x, y = _toy()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
    results = []
    for data in (loader, TensorBatches(x, y, batch_size=64, shuffle=True, seed=0)):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        metrics = train(model, torch.optim.Adam(model.parameters(), 1e-2), _Classify(), data, 5,
                        seed=0, eval_data=TensorBatches(x, y, batch_size=256))
        results.append(metrics.accuracy)
    assert min(results) > 0.9


def test_tensor_batches_repeat_from_their_seed():
    x = torch.arange(10)
    orders = [[b.tolist() for b in TensorBatches(x, batch_size=4, shuffle=True, seed=3)]
              for _ in range(2)]
    assert orders[0] == orders[1] and sorted(sum(orders[0], [])) == list(range(10))


def test_discover_finds_the_subtask_and_leaves_the_model_alone():
    x, y = _toy()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    train(model, torch.optim.Adam(model.parameters(), 1e-2), _Classify(),
          TensorBatches(x, y, batch_size=64, shuffle=True), 10, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    result = discover(model, _Classify(), TensorBatches(x, y, batch_size=64, shuffle=True),
                      TensorBatches(x, y, batch_size=512),
                      Discovery(lambdas=[1e-3, 1e-6], epochs=8, mask_lr=0.05))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not sf.masked_layers(model)
    assert result.accuracy > 0.9 and 0 < result.density < 1
    assert [c[0] for c in result.candidates] == [1e-3, 1e-6]
    assert set(result.subnetwork.names()) == {"0.weight", "2.weight"}


def test_transfer_conditions_choose_and_freeze_as_the_paper_defines():
    torch.manual_seed(0)
    source, target = nn.Linear(20, 20), nn.Linear(20, 20)
    sub = sf.Subnetwork.from_masks({"weight": torch.rand(20, 20) < 0.25})
    assert chosen_subnetwork("subtask_induction", sub, source, 0) is sub
    assert chosen_subnetwork("scratch", sub, source, 0) is None
    rnd = chosen_subnetwork("random", sub, source, 0)
    assert rnd.counts() == sub.counts() and rnd != sub
    assert (chosen_subnetwork("complement", sub, source, 0) & sub).density() == 0
    frozen, fraction = transfer_condition("subtask_induction", sub, source, target, 0, "all")
    assert fraction == pytest.approx(sub.density()) and target.weight in frozen
    frozen, fraction = transfer_condition("full_model", sub, source, target, 0, "all")
    assert len(frozen) == 0 and fraction == 0.0 and torch.equal(target.weight, source.weight)
    assert set(CONDITIONS) >= {"subtask_induction", "scratch", "random", "complement",
                               "full_model"}


def test_report_and_imagenet16_name_a_missing_path(tmp_path, capsys):
    from subind.commands import main

    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert f"results directory {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err
    assert main(["imagenet16", str(tmp_path / "imagenet"), str(tmp_path / "in16")]) == 2
    assert f"ImageNet folder {tmp_path / 'imagenet'} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "in16").exists()
    manifest.claim(tmp_path / "sb", "shape-bias", {})
    assert main(["report", str(tmp_path / "sb")]) == 2
    assert "holds the results of `subind shape-bias`" in capsys.readouterr().err


def test_a_discovery_built_in_code_is_held_to_its_choices():
    """A Discovery made in Python meets no parser: validate() checks every
    Literal field against its choices, naming the flag."""
    from subind.engine.protocol import Discovery

    Discovery(optimizer="adamw", ablation="mean", objective="kl").validate()
    for name, value in (("optimizer", "sgd"), ("ablation", "noise"), ("objective", "mse"),
                        ("method", "random"), ("granularity", "layer")):
        with pytest.raises(ValueError, match=f"--{name} must be one of"):
            Discovery(**{name: value}).validate()
