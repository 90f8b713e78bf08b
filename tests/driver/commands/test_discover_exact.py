"""`subind discover` never changes an answer without saying so: a killed run
resumes to exactly the uninterrupted result under every option that carries
state, a results directory's identity covers every input that can change the
result, the controls score what they trained on, and bad inputs are refused
before the directory is claimed."""
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

import subind_fast as sf
from subind.commands import main

MODEL = ["--model", "entry:discover_entries:block_mlp"]
BASE = [*MODEL, "--data", "entry:discover_entries:gaussian_data", "--batch-size", "32",
        "--epochs", "4", "--mask-lr", "0.05", "--no-progress"]
LAMBDA = ["--lambdas", "1e-4"]
ENTRIES = os.path.join(os.path.dirname(__file__), "..", "..")  # discover_entries.py


def _crashed(args, crash_after: str):
    env = {**os.environ, "SUBIND_CRASH_AFTER": crash_after, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([ENTRIES, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "subind", *args], env=env, text=True,
                          capture_output=True, timeout=600)


def _files(out):
    """Every result file's bytes, the summary without its wall time."""
    found = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and "checkpoint" not in path.parts and "-tb" not in str(path) \
                and not path.name.startswith("."):
            found[str(path.relative_to(out))] = path.read_bytes()
    for name in [n for n in found if n.endswith(".safetensors")]:
        # safetensors writes its header's keys in no fixed order: compare the contents
        sub = sf.Subnetwork.load(out / name)
        found[name] = ({n: sub.packed(n).tolist() for n in sub.names()}, sub.metadata)
    for name in [n for n in found if n.endswith("summary.json")]:
        summary = json.loads(found[name])
        summary.pop("seconds")
        found[name] = summary
    return found


STATEFUL = {
    "target density": ["--target-density", "0.3"],
    "mean ablation": [*LAMBDA, "--ablation", "mean"],
    "learned ablation": [*LAMBDA, "--ablation", "learned"],
    "corrupted ablation": [*LAMBDA, "--ablation", "corrupted"],
    "hard concrete": [*LAMBDA, "--method", "hard_concrete"],
    "gumbel, 2 samples": [*LAMBDA, "--method", "gumbel", "--n-samples", "2"],
    "neurons": [*LAMBDA, "--granularity", "neuron"],
}


@pytest.mark.parametrize("option", list(STATEFUL))
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, option):
    extra = [*STATEFUL[option], "--no-controls"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(["discover", *BASE, *extra, "--out", str(whole)]) == 0
    lam = "0" if "--target-density" in extra else "0.0001"
    epoch = random.Random(option).randint(1, 3)  # a random epoch, the same on every run
    crashed = _crashed(["discover", *BASE, *extra, "--out", str(killed)], f"{lam}/{epoch}")
    assert crashed.returncode == 75, crashed.stderr[-2000:]
    assert not (killed / "subnetwork.safetensors").exists()
    assert main(["discover", *BASE, *extra, "--out", str(killed)]) == 0
    assert _files(killed) == _files(whole)


@pytest.mark.parametrize("control", ["random_weights", "shuffled_labels"])
def test_a_run_killed_inside_a_control_resumes_it_exactly(tmp_path, control):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = ["discover", *BASE, *LAMBDA, "--epochs", "3"]
    assert main([*args, "--out", str(whole)]) == 0
    crashed = _crashed([*args, "--out", str(killed)], f"{control}:0.0001/2")
    assert crashed.returncode == 75, crashed.stderr[-2000:]
    assert (killed / "lambda-0.0001" / "result.json").is_file()  # the discovery itself is done
    assert main([*args, "--out", str(killed)]) == 0
    assert _files(killed) == _files(whole)


def _state_file(path, model_entry=None, nan=False):
    sys.path.insert(0, ENTRIES)
    import discover_entries

    model = discover_entries.block_mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if nan:
        state["head.weight"][0, 0] = float("nan")
    save_file(state, str(path))
    return path


def test_the_identity_covers_every_input_file_and_option(tmp_path, capsys):
    """Each input that can change the result, changed in turn, is refused:
    the weights file's content, then options (the kernels among them)."""
    from safetensors.torch import load_file

    weights = _state_file(tmp_path / "w.safetensors")
    original = weights.read_bytes()
    out = tmp_path / "out"
    args = ["discover", *BASE, *LAMBDA, "--epochs", "1", "--no-controls", "--weights",
            str(weights), "--out", str(out)]
    assert main(args) == 0
    state = load_file(str(weights))
    state["head.bias"] += 1.0
    save_file(state, str(weights))
    capsys.readouterr()
    assert main(args) == 2
    assert "content" in capsys.readouterr().err
    weights.write_bytes(original)
    for changed, field in ((["--kernels", "eager"], "kernels"),
                           (["--eval-data", "entry:discover_entries:gaussian_odd_eval"],
                            "eval_data"),
                           (["--ablation", "mean"], "ablation"),
                           (["--compile", "on"], "compile")):
        assert main([*args, *changed]) == 2, changed
        err = capsys.readouterr().err
        assert "different configuration" in err and f"{field}:" in err, err
    assert main(args) == 0  # the original configuration is still welcome


def test_the_identity_covers_an_hf_directory_and_an_image_folder(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1,
                                     n_head=2)
    folder = tmp_path / "hf"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    images = tmp_path / "images"
    for k, cls in enumerate(("a", "b")):
        (images / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * k + 10 * i, 0, 0)).save(images / cls / f"{i}.png")
    from subind.commands.discover import _identity, DiscoverConfig, DiscoverRun
    from subind.engine.protocol import Discovery

    cfg = DiscoverConfig(model=f"hf:{folder}", data=f"imagefolder:{images}")
    run = DiscoverRun(out=tmp_path / "out")
    before = _identity(cfg, Discovery(), run)
    assert set(before["content"]) == {"model", "data"}
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)  # other random weights
    after = _identity(cfg, Discovery(), run)
    assert after["content"]["model"] != before["content"]["model"]
    assert after["content"]["data"] == before["content"]["data"]
    Image.new("RGB", (8, 8), (0, 255, 0)).save(images / "a" / "0.png")
    assert _identity(cfg, Discovery(), run)["content"]["data"] != \
        before["content"]["data"]
    # A results folder inside the image folder is refused before anything is written.
    capsys.readouterr()
    inside = images / "results"
    assert main(["discover", "--model", "timm:resnet18", "--weights", "random", "--data",
                 f"imagefolder:{images}", "--out", str(inside), *LAMBDA]) == 2
    assert "inside the image folder" in capsys.readouterr().err and not inside.exists()


def test_shuffled_labels_are_scored_on_the_labels_they_trained_on(tmp_path):
    """With the training data as evaluation data, the control's evaluation
    set is its training set, shuffled once (not a second permutation)."""
    from subind.commands.discover import _run_controls  # noqa: F401 (the function under test)
    from subind.engine.controls import ShuffledLabels

    out = tmp_path / "out"
    assert main(["discover", *MODEL, "--data", "entry:discover_entries:gaussian_train_only",
                 "--batch-size", "32", "--epochs", "2", "--mask-lr", "0.05", "--no-progress",
                 *LAMBDA, "--out", str(out)]) == 0
    control = sf.Subnetwork.load(out / "controls" / "shuffled_labels" / "lambda-0.0001" /
                                 "subnetwork.safetensors")
    sys.path.insert(0, ENTRIES)
    import discover_entries

    model = discover_entries.block_mlp()
    sf.mask_model(model, subnetwork=control)
    model.eval()
    data = ShuffledLabels(discover_entries.gaussian_data()["train"], 0 + 2)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.stack([torch.as_tensor(data[i][1]) for i in range(len(data))])
    with torch.no_grad():
        own = float((model(x).argmax(-1) == y).float().mean())
    reported = json.loads((out / "summary.json").read_text())["controls"]["shuffled_labels"]
    assert reported["accuracy"] == pytest.approx(own, abs=1e-6)


def test_the_shuffled_labels_control_is_not_run_under_the_kl_objective(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["discover", *BASE, *LAMBDA, "--epochs", "1", "--objective", "kl",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["controls"]) == {"random_weights"}
    assert "objective kl" in summary["controls_not_run"]["shuffled_labels"]
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "| shuffled labels | – | – | not run: objective kl" in capsys.readouterr().out


def test_eval_data_use_the_held_out_split_and_an_empty_one_is_an_error(tmp_path, capsys):
    out = tmp_path / "held_out"
    assert main(["discover", *BASE, *LAMBDA, "--epochs", "1", "--no-controls",
                 "--eval-data", "entry:discover_entries:gaussian_odd_eval", "--out",
                 str(out)]) == 0
    rows = (out / "discovery-lambda0.0001.csv").read_text().splitlines()
    sys.path.insert(0, ENTRIES)
    import discover_entries

    sub = sf.Subnetwork.load(out / "subnetwork.safetensors")
    model = discover_entries.block_mlp()
    sf.mask_model(model, subnetwork=sub)
    model.eval()
    x, y = discover_entries.gaussian_odd_eval()["eval"].tensors
    with torch.no_grad():
        held_out = float((model(x).argmax(-1) == y).float().mean())
    assert json.loads((out / "summary.json").read_text())["accuracy"] == \
        pytest.approx(held_out, abs=1e-6)
    assert len(rows) == 2
    capsys.readouterr()
    empty = tmp_path / "empty"
    assert main(["discover", *MODEL, "--data", "entry:discover_entries:gaussian_empty_eval",
                 "--batch-size", "32", "--epochs", "1", "--no-progress", *LAMBDA,
                 "--out", str(empty)]) == 2
    assert "evaluation split holds no samples" in capsys.readouterr().err
    assert not empty.exists()


def test_nan_weights_are_refused_naming_the_file(tmp_path, capsys):
    weights = _state_file(tmp_path / "nan.safetensors", nan=True)
    out = tmp_path / "out"
    assert main(["discover", *BASE, *LAMBDA, "--weights", str(weights), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "NaN" in err and "head.weight" in err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--include", "encoder.*"], "include pattern 'encoder.*' matches no maskable layer"),
    (["--method", "gumbel", "--ablation", "mean"], "needs a deterministic mask"),
    (["--method", "gumbel", "--n-samples", "64"], "--n-samples 64"),
    (["--target-density", "1e-9"], "keeps no weight"),
])
def test_every_check_runs_before_the_directory_is_claimed(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    args = ["discover", *BASE, *([] if "--target-density" in extra else LAMBDA), *extra,
            "--no-controls", "--out", str(out)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # the corrected command may use it


def test_a_non_zero_ablation_refuses_multihead_attention_before_claiming(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["discover", "--model", "entry:discover_entries:attention_classifier", "--data",
            "entry:discover_entries:gaussian_data", "--batch-size", "32", "--epochs", "1",
            "--no-progress", "--no-controls", *LAMBDA]
    assert main([*args, "--ablation", "mean", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "encoder.self_attn" in err and "computes one product" in err
    assert not out.exists()
    assert main([*args, "--ablation", "mean", "--exclude", "encoder.self_attn",
                 "--out", str(out)]) == 0  # the corrected command runs there


def test_a_config_choice_is_checked_before_the_directory_is_claimed(tmp_path, capsys):
    config = tmp_path / "c.json"
    for values in ({"objective": "nonsense"}, {"controls": "no"}, {"dtype": "fp16"}):
        config.write_text(json.dumps(values))
        out = tmp_path / "out"
        assert main(["discover", *BASE, *LAMBDA, "--config", str(config), "--out",
                     str(out)]) == 2, values
        assert str(config) in capsys.readouterr().err
        assert not out.exists()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_corrupted_ablation_on_two_ranks_matches_one_process(tmp_path, strategy):
    """The corrupted partners are paired over the data set, not within a
    rank's share of a batch: two ranks find what one process finds."""
    extra = [*LAMBDA, "--ablation", "corrupted", "--dtype", "fp64", "--no-controls",
             "--epochs", "2", "--eval-batch-size", "16"]
    assert main(["discover", *BASE, *extra, "--out", str(tmp_path / "one")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([ENTRIES, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", "-m", "subind", "discover", *BASE, *extra,
                           "--strategy", strategy, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (sf.Subnetwork.load(tmp_path / d / "subnetwork.safetensors")
                for d in ("one", "two"))
    assert one == two
    logs = [[[float(x) for x in row.split(",")] for row in
             (tmp_path / d / "discovery-lambda0.0001.csv").read_text().splitlines()[1:]]
            for d in ("one", "two")]
    torch.testing.assert_close(torch.tensor(logs[0]), torch.tensor(logs[1]), rtol=1e-9,
                               atol=1e-9)


def test_corrupted_ablation_pairs_do_not_depend_on_the_batching():
    """Each sample's partner is fixed by the seed (a derangement of the data
    set); a batch of one has its partner too."""
    from subind.engine.ablation import CorruptedPairs, Paired

    data = [(torch.tensor([float(i)]), i) for i in range(33)]
    pairs = CorruptedPairs(data, seed=4)
    partners = [int(pairs[i].corrupted[1]) for i in range(33)]
    assert sorted(partners) == list(range(33)) and all(p != i for i, p in enumerate(partners))
    assert isinstance(pairs[0], Paired) and pairs[0].clean == data[0]
    from torch.utils.data import DataLoader

    for batch_size in (1, 5, 33):
        seen = [(int(b.clean[1][k]), int(b.corrupted[1][k]))
                for b in DataLoader(pairs, batch_size=batch_size) for k in range(len(b.clean[1]))]
        assert seen == list(enumerate(partners))
    with pytest.raises(ValueError, match="at least 2 samples"):
        CorruptedPairs(data[:1], seed=0)


def test_corrupted_ablation_scores_an_evaluation_batch_of_one(tmp_path):
    """65 evaluation samples in batches of 16: the last holds one sample."""
    out = tmp_path / "out"
    assert main(["discover", *MODEL, "--data", "entry:discover_entries:gaussian_odd_eval",
                 "--batch-size", "32", "--epochs", "1", "--no-progress", *LAMBDA,
                 "--ablation", "corrupted", "--eval-batch-size", "16", "--no-controls",
                 "--out", str(out)]) == 0
    accuracy = json.loads((out / "summary.json").read_text())["accuracy"]
    assert main(["discover", *MODEL, "--data", "entry:discover_entries:gaussian_odd_eval",
                 "--batch-size", "32", "--epochs", "1", "--no-progress", *LAMBDA,
                 "--ablation", "corrupted", "--eval-batch-size", "65", "--no-controls",
                 "--out", str(tmp_path / "one_batch")]) == 0
    assert json.loads((tmp_path / "one_batch" / "summary.json").read_text())["accuracy"] == \
        accuracy  # the evaluation batch size changes nothing


def test_report_says_what_a_directory_holds(tmp_path, capsys):
    """A target-density run reports its target, not 'λ = 0'; a directory
    without a summary says whether the run was interrupted or never got
    going; another command's directory lists what that command wrote."""
    out = tmp_path / "target"
    assert main(["discover", *BASE, "--target-density", "0.3", "--epochs", "2",
                 "--no-controls", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "aimed at density 0.3" in text and "chosen λ" not in text
    (out / "summary.json").unlink()
    assert main(["report", str(out)]) == 2
    assert "rerun its command" in capsys.readouterr().err
    from subind.engine import manifest

    other = tmp_path / "pooled"
    manifest.claim(other, "mean-pool", {})
    (other / "preview.png").write_bytes(b"")
    assert main(["report", str(other)]) == 2
    err = capsys.readouterr().err
    assert "preview.png" in err and "summary.*" not in err


def test_warnings_read_as_messages_not_source_lines(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ENTRIES, os.environ.get("PYTHONPATH",
                                                                                 "")])}
    done = subprocess.run([sys.executable, "-m", "subind", "discover", *BASE, "--lambdas", "10",
                           "--epochs", "1", "--no-controls", "--out", str(tmp_path / "empty")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]  # λ = 10 keeps nothing: a warning
    assert "subind: warning: the discovered subnetwork is empty" in done.stderr
    assert "protocol.py" not in done.stderr
