"""The arithmetic experiment's pieces: expressions, datasets, the sweep's
resume and sharding, the CLI and the report (smoke preset end to end)."""
import json

import pytest
import torch

from subind.experiments.arithmetic import data as A
from subind.commands import main as cli
from subind.engine.sweep import parse_shard
from subind.experiments.arithmetic.experiment import ArithmeticExperiment, config_for
from subind.experiments.arithmetic.expressions import ExpressionError, parse

PAIRS = torch.cartesian_prod(torch.arange(60), torch.arange(60))


@pytest.mark.parametrize("text,reference", [
    ("a+a*b", lambda a, b: a + a * b), ("ab", lambda a, b: a * b),
    ("a^2+ab", lambda a, b: a * a + a * b), ("a^2+b^2", lambda a, b: a * a + b * b),
    ("a^2+a*b+b^2", lambda a, b: a * a + a * b + b * b), ("a^3+a*b", lambda a, b: a ** 3 + a * b),
    ("a^2-b^2", lambda a, b: a * a - b * b), ("a+b", lambda a, b: a + b), ("a^2", lambda a, b: a * a),
    ("2(a - 3b)^2 + 5", lambda a, b: 2 * (a - 3 * b) ** 2 + 5), ("-a", lambda a, b: -a),
])
@pytest.mark.parametrize("p", [2, 7, 97])
def test_expressions_match_integer_arithmetic(text, reference, p):
    a, b = PAIRS[:, 0], PAIRS[:, 1]
    assert torch.equal(parse(text)(a, b, p), reference(a, b) % p)


def test_large_inputs_do_not_overflow():
    a = torch.tensor([999, 10 ** 6])
    assert parse("a^5")(a, a, 7).tolist() == [pow(999, 5, 7), pow(10 ** 6, 5, 7)]


@pytest.mark.parametrize("text,message", [
    ("a+c", "unknown symbol 'c' at position 2"), ("a+", "expected more input"),
    ("a^b", "must be a non-negative integer"), ("__import__('os')", "unknown symbol '_'"),
    ("", "empty"), ("a**2", "unexpected '\\*'"), ("(a+b", "expected '\\)'"),
    ("a^1000", "exceeds"), ("a b c", "unknown symbol 'c'"),
    ("(" * 1000 + "a" + ")" * 1000, "nest 1000 deep"),
])
def test_bad_expressions_are_rejected(text, message):
    with pytest.raises(ExpressionError, match=message):
        parse(text)


def test_bad_modulus():
    with pytest.raises(ValueError, match="p must be an integer >= 2"):
        A.Vocabulary(100, 1)
    with pytest.raises(ValueError, match="modulus p must be an integer >= 2"):
        parse("a")(PAIRS[:, 0], PAIRS[:, 1], 1)


def test_base_training_set_size_coverage_and_determinism():
    vocab = A.Vocabulary(1000, 7)
    rows = A.base_training_set("a+a*b", vocab, 0.2, seed=0)
    assert rows.shape == (200_000, 4)
    pairs = rows[:, 0] * 1000 + rows[:, 1]
    assert pairs.unique().numel() == 200_000  # no repeated pair
    seen = torch.zeros(1000, dtype=torch.bool)
    seen[rows[:, 0]] = True
    seen[rows[:, 1]] = True
    assert seen.all()
    assert torch.all(rows[:, 2] == vocab.sep)
    assert torch.equal(rows[:, 3], (rows[:, 0] + rows[:, 0] * rows[:, 1]) % 7)
    assert torch.equal(rows, A.base_training_set("a+a*b", vocab, 0.2, seed=0))
    assert not torch.equal(rows, A.base_training_set("a+a*b", vocab, 0.2, seed=1))


def test_tiny_fraction_still_covers_every_token():
    vocab = A.Vocabulary(300, 7)
    rows = A.base_training_set("a*b", vocab, 0.001, seed=3)
    seen = torch.zeros(300, dtype=torch.bool)
    seen[rows[:, 0]] = True
    seen[rows[:, 1]] = True
    assert seen.all()


def test_minimal_set_is_ambiguous_and_disambiguation_resolves_it():
    vocab = A.Vocabulary(1000, 7)
    minimal = A.minimal_set("a^2+a*b", vocab)
    assert minimal.shape == (1000, 4) and torch.equal(minimal[:, 0], torch.arange(1000))
    candidates = ["a^2+a*b", "2a^2", "2b^2", "a^2+b^2"]  # the paper's candidate rules
    assert A.agree_on(minimal, candidates, vocab)
    sets = A.transfer_sets("a^2+a*b", vocab, n_disambiguation=1000, seed=0)
    assert sets["train"].shape == (2000, 4)
    assert sets["eval"].shape == sets["test"].shape == (1000, 4)
    assert not A.agree_on(sets["train"][1000:], candidates, vocab)
    assert torch.equal(sets["test"], A.transfer_sets("a^2+a*b", vocab, 1000, seed=0)["test"])
    with pytest.raises(ValueError, match="n_disambiguation=1000001 must be between 0 and the 1000000"):
        A.transfer_sets("a^2+a*b", vocab, 1_000_001, seed=0)


def test_paper_grid_has_16_sample_sizes_from_10_to_10000():
    ns = config_for("paper").n_disambiguation
    assert len(ns) == 16 and ns[0] == 10 and ns[-1] == 10_000 and ns == sorted(ns)


def test_shard_specs():
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) == (0, 1)
    for bad in ("5/5", "1-2", "a/b", "-1/3", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_shards_partition_the_grid(tmp_path):
    exp = ArithmeticExperiment(config_for("paper", layers=[2, 4], seeds=[0, 1]), tmp_path,
                               progress=False)
    grid = exp.grid()
    parts = [grid[i::3] for i in range(3)]
    assert sorted(r for part in parts for r in part) == grid
    assert len(set(grid)) == len(grid) == 5 * 2 * 16 * 2


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ExpressionError, match="unknown symbol 'x'"):
        config_for("smoke", target="a+x")
    with pytest.raises(ValueError, match="unknown conditions \\['oracle'\\]"):
        config_for("smoke", conditions=["oracle"])
    with pytest.raises(ValueError, match="outside 0..2500"):
        config_for("smoke", n_disambiguation=[10 ** 6])
    with pytest.raises(ValueError, match="p must be an integer >= 2"):
        config_for("smoke", p=1)
    target = tmp_path / "file"
    target.write_text("")
    with pytest.raises(ValueError, match="is not writable"):
        ArithmeticExperiment(config_for("smoke"), target / "sub", progress=False)


@pytest.mark.slow
def test_smoke_preset_end_to_end_resume_and_report(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["arithmetic", "--preset", "smoke", "--out", str(out), "--no-progress",
                "--shard", "0/2"]) == 0
    first = sorted((out / "runs").rglob("*.json"))
    assert len(first) == 6  # its half of the grid, then the other half nobody had claimed
    for lost in first[::2]:
        lost.unlink()
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}
    assert cli(["arithmetic", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    records = sorted((out / "runs").rglob("*.json"))
    assert len(records) == 6
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # finished runs not redone
    record = json.loads(records[0].read_text())
    assert {"test_accuracy", "eval_accuracy", "epoch", "config", "versions", "seconds"} <= set(record)
    assert (out / "base" / "L1" / "model.safetensors").exists()
    assert (out / "subnetworks" / "L1.safetensors").exists()
    capsys.readouterr()
    assert cli(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| N disambiguation |" in printed and "subtask_induction" in printed
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "report.md").exists()


def test_cli_reports_bad_arguments(tmp_path, capsys):
    assert cli(["arithmetic", "--preset", "smoke", "--out", str(tmp_path), "--subtask", "a%b"]) == 2
    assert "unknown symbol '%'" in capsys.readouterr().err
    assert cli(["arithmetic", "--preset", "smoke", "--out", str(tmp_path), "--shard", "3/2"]) == 2
    assert cli(["report", str(tmp_path / "nothing")]) == 2


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_redoing_or_half_writing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    exp = ArithmeticExperiment(config_for("smoke"), out, progress=False)
    real = ArithmeticExperiment.transfer_run
    calls = {"n": 0}

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed in the middle of the third run
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ArithmeticExperiment, "transfer_run", crashing)
    with pytest.raises(KeyboardInterrupt):
        exp.run()
    done = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}
    assert len(done) == 2
    assert not list(out.rglob("*.tmp"))  # nothing half-written
    monkeypatch.setattr(ArithmeticExperiment, "transfer_run", real)
    written = ArithmeticExperiment(config_for("smoke"), out, progress=False).run()
    assert len(written) == 4 and not set(written) & set(done)
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())


def test_training_is_repeatable_whatever_the_global_rng_state():
    """Dropout draws from torch's global generator; each training stage seeds it."""
    from subind.engine.training import TensorBatches, train
    from subind.experiments.arithmetic.experiment import make_model
    from subind.experiments.arithmetic.task import LastTokenTask

    cfg = config_for("smoke")
    rows = A.base_training_set(cfg.base, A.Vocabulary(cfg.n_numbers, cfg.p), 0.2, seed=0)
    weights = []
    for prior in (1, 2):
        torch.manual_seed(prior)
        model = make_model(cfg, 1, seed=0)
        train(model, torch.optim.AdamW(model.parameters(), lr=1e-3), LastTokenTask(),
              TensorBatches(rows, batch_size=64, shuffle=True, seed=0), 2, seed=0)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_appendix_b4_pairs_are_presets_with_valid_subtasks():
    from subind.experiments.arithmetic.experiment import APPENDIX_B4_PAIRS, PRESETS, config_for

    assert len(APPENDIX_B4_PAIRS) == 7
    for name, base, subtask, target in APPENDIX_B4_PAIRS:
        for budget in ("quick", "paper"):
            cfg = config_for(f"{budget}-{name}")  # validates the expressions
            assert (cfg.base, cfg.subtask, cfg.target) == (base, subtask, target)
            assert {k: v for k, v in PRESETS[f"{budget}-{name}"].items()
                    if k not in ("base", "subtask", "target")} == PRESETS[budget]


def test_fused_and_eager_kernels_find_the_same_smoke_subnetwork(tmp_path):
    """--kernels eager runs the same math in plain PyTorch ops: on the smoke
    preset at fp32 the discovered hard masks agree (issue target: >= 99.9 %
    of entries, densities within 0.1 percentage point)."""
    import subind_fast as sf

    masks = {}
    for kernels in ("fused", "eager"):
        out = tmp_path / kernels
        assert cli(["arithmetic", "--preset", "smoke", "--out", str(out), "--no-progress",
                    "--conditions", "subtask_induction", "--n-disambiguation", "0",
                    "--kernels", kernels, "--compile", "off"]) == 0
        masks[kernels] = sf.Subnetwork.load(out / "subnetworks" / "L1.safetensors")
        assert json.loads((out / "manifest.json").read_text())["config"]["kernels"] == kernels
    fused, eager = masks["fused"].masks(), masks["eager"].masks()
    equal = sum((fused[k] == eager[k]).sum().item() for k in fused)
    assert equal / sum(m.numel() for m in fused.values()) >= 0.999
    assert abs(masks["fused"].density() - masks["eager"].density()) <= 1e-3


def test_bad_kernel_and_compile_choices_are_refused(tmp_path, capsys):
    assert cli(["arithmetic", "--preset", "smoke", "--out", str(tmp_path / "a"),
                "--kernels", "fastest"]) == 2
    err = capsys.readouterr().err
    assert "fastest" in err and "--kernels" in err
    assert cli(["arithmetic", "--preset", "smoke", "--out", str(tmp_path / "b"),
                "--compile", "maybe"]) == 2
    err = capsys.readouterr().err
    assert "maybe" in err and "--compile" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_last_token_task_scores_each_row_as_its_accuracy_counts():
    from transformers import GPT2Config, GPT2LMHeadModel

    from subind.engine.training import TensorBatches
    from subind.experiments.arithmetic.task import LastTokenTask

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=12, n_positions=4, n_embd=16, n_layer=1,
                                       n_head=2, n_inner=32))
    rows = torch.randint(0, 12, (37, 4))
    task, data = LastTokenTask(), TensorBatches(rows, batch_size=8)
    right = task.correct(model, data)
    with torch.no_grad():
        model.eval()
        expected = model(input_ids=rows[:, :-1]).logits[:, -1].argmax(-1) == rows[:, -1]
    assert torch.equal(right, expected)
    assert float(right.double().mean()) == pytest.approx(task.evaluate(model, data).accuracy,
                                                         abs=1e-15)
