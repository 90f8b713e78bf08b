"""`subind discover` validates before it writes: every mistake below is an
error (exit 2) naming the option, file or folder at fault, and the results
directory is left as it was — so the corrected command then runs."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

import subind_fast as sf
from subind.commands import main

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _vit(num_classes=16):
    return ["--model", "timm:vit_tiny_patch16_224", "--weights", "random", "--model-kwargs",
            json.dumps({**TINY, "num_classes": num_classes})]


FAST = ["--lambdas", "1e-5", "--epochs", "1", "--batch-size", "64", "--mask-lr", "0.05",
        "--mask-init", "0.05", "--no-progress", "--no-controls"]


def _discover(out, *extra, model=None, data="experiment:vision/pooled"):
    return main(["discover", *(model or _vit()), "--data", data, *FAST, "--out", str(out),
                 *extra])


def _folder(root, classes, count=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = (torch.rand(36, 36, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _error(capsys) -> str:
    return capsys.readouterr().err


def test_eval_folders_with_other_class_folders_are_refused(tmp_path, capsys):
    """Defect 3: ImageFolder numbers classes by sorted name, so other folders
    shift every evaluation label."""
    train = _folder(tmp_path / "train", ["cat", "dog", "eel"])
    evald = _folder(tmp_path / "eval", ["cat", "eel", "fox"], seed=1)
    out = tmp_path / "run"
    assert _discover(out, "--eval-data", f"imagefolder:{evald}", "--batch-size", "4",
                     model=_vit(3), data=f"imagefolder:{train}") == 2
    err = _error(capsys)
    assert "different classes" in err and "'dog'" in err and "'fox'" in err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--lambdas", "nan"], "--lambdas must be finite positive numbers"),
    (["--lambdas", "inf"], "--lambdas must be finite positive numbers"),
    (["--lambdas", "1e-5,1e-5"], "--lambdas lists a value twice"),
    (["--beta-final", "nan"], "--beta-final must be a positive number"),
    (["--mask-init", "nan"], "--mask-init must be a finite number"),
    (["--mask-lr", "-1"], "--mask-lr must be a positive number"),
])
def test_non_finite_and_duplicate_numbers_are_refused(extra, message, tmp_path, capsys):
    """Defect 4 (and the low items: --beta-final nan, duplicate --lambdas)."""
    out = tmp_path / "run"
    assert _discover(out, *extra) == 2
    assert message in _error(capsys)
    assert not out.exists()


def test_a_transformers_directory_without_weights_needs_weights_random(tmp_path, capsys):
    """Defect 5: a config.json alone would be a random model."""
    from transformers import GPT2Config

    GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=60, n_positions=8).save_pretrained(
        tmp_path / "lm")
    out = tmp_path / "run"
    args = ["discover", "--model", f"hf:{tmp_path / 'lm'}", "--data",
            "experiment:arithmetic/a*b", *FAST, "--out", str(out)]
    assert main(args) == 2
    err = _error(capsys)
    assert "holds a config.json but no weights" in err and "--weights random" in err
    assert not out.exists()


@pytest.mark.parametrize("extra, message", [
    (["--model", "timm:vit_tiny_patch16_22"], "did you mean vit_tiny_patch16_224"),
    (["--model", "entry:subind.engine.models:no_such_function"], "has no function"),
    (["--model", "entry:no_such_module:f"], "cannot import 'no_such_module'"),
    (["--data", "imagefolder:/nonexistent/images"], "/nonexistent/images"),
    (["--data", "experiment:arithmetic/a*b"], "cannot run on --data experiment:arithmetic/a*b"),
    (["--mean", "1,2"], "--mean applies to imagefolder: data"),
    (["--density", "0.5"], "--density is for the selection methods"),
    (["--method", "magnitude", "--density", "1.5"], "ignored"),
    (["--hf-class", "causal-lm"], "--hf-class applies to hf:DIR models"),
    (["--blocks", "blocks.*"], "--blocks names the blocks"),
])
def test_a_failed_start_names_the_mistake_and_leaves_the_directory_alone(extra, message,
                                                                         tmp_path, capsys):
    """Defects 7 and 10: nothing is claimed before the model, data and options
    check out, so the corrected command runs in the same --out."""
    out = tmp_path / "run"
    model = _vit()
    if extra[0] == "--model":
        model = [extra[0], extra[1], "--weights", "random"]
        extra = []
    assert _discover(out, *extra, model=model) == 2
    assert message in _error(capsys)
    assert not out.exists()
    assert _discover(out) == 0  # the corrected command
    assert sf.Subnetwork.load(out / "subnetwork.safetensors").density() > 0


def test_weights_and_image_files_at_fault_are_named(tmp_path, capsys):
    """Defect 10: damaged and wrong-shape weights, a truncated image, fewer
    outputs than class folders, --out naming a file."""
    out = tmp_path / "run"
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00not a header")
    wrong = tmp_path / "wrong.pt"
    torch.save({"head.weight": torch.zeros(3, 3)}, wrong)
    for weights, message in ((damaged, f"weights file {damaged} cannot be read"),
                             (wrong, f"{wrong} does not fit")):
        model = [*_vit()[:2], "--weights", str(weights), *_vit()[4:]]
        assert _discover(out, model=model) == 2
        assert message in _error(capsys)
    images = _folder(tmp_path / "images", ["a", "b", "c"])
    assert _discover(out, model=_vit(2), data=f"imagefolder:{images}") == 2
    err = _error(capsys)
    assert "has 2 outputs but --data" in err and "has 3 classes" in err
    (images / "a" / "0.png").write_bytes((images / "a" / "1.png").read_bytes()[:80])
    assert _discover(out, model=_vit(3), data=f"imagefolder:{images}") == 2
    assert f"image {images / 'a' / '0.png'} cannot be read" in _error(capsys)
    assert not out.exists()
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert _discover(a_file) == 2
    assert "is a file, not a directory" in _error(capsys)


def _background_discover(out, *extra, env=None):
    command = [sys.executable, "-m", "subind", "discover", *_vit(), "--data",
               "experiment:vision/pooled", "--batch-size", "64", "--no-progress", "--no-controls",
               "--out", str(out), *extra]
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_process_on_one_out_is_refused_not_interleaved(tmp_path, capsys):
    """Defect 14: the first process holds the directory; the second says so."""
    out = tmp_path / "run"
    first = _background_discover(out, "--lambdas", "1e-5", "--epochs", "20")
    deadline = time.time() + 120
    while not (out / "discovery-lambda1e-05.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()
    assert main(["discover", *_vit(), "--data", "experiment:vision/pooled", "--lambdas", "1e-5",
                 "--epochs", "20", "--batch-size", "64", "--no-progress", "--no-controls",
                 "--out", str(out)]) == 2
    assert "in use by another subind discover process" in _error(capsys)
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    rows = (out / "discovery-lambda1e-05.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(20))  # each epoch once
    assert not (out / ".run.lock").exists()


def test_a_damaged_checkpoint_is_named_on_resume(tmp_path, capsys):
    """Defect 10: a truncated DCP checkpoint is an error naming its folder."""
    out = tmp_path / "run"
    crashed = _background_discover(out, "--lambdas", "1e-5", "--epochs", "3",
                                   env={"SUBIND_CRASH_AFTER": "1e-05/1"})
    crashed.communicate(timeout=600)
    assert crashed.returncode == 75
    checkpoint = out / "checkpoint" / "lambda-1e-05" / "epoch-1"
    for path in checkpoint.iterdir():
        path.write_bytes(path.read_bytes()[:7])
    assert main(["discover", *_vit(), "--data", "experiment:vision/pooled", "--lambdas", "1e-5",
                 "--epochs", "3", "--batch-size", "64", "--no-progress", "--no-controls",
                 "--out", str(out)]) == 2
    err = _error(capsys)
    assert f"the checkpoint {checkpoint} is damaged or incomplete" in err and "remove" in err


def test_another_weights_file_at_the_same_path_is_another_configuration(tmp_path, capsys):
    """Defect 15: the manifest records what the weights file holds."""
    import timm

    weights = tmp_path / "model.pt"
    torch.manual_seed(1)
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=16, **TINY).state_dict(),
               weights)
    model = [*_vit()[:2], "--weights", str(weights), *_vit()[4:]]
    out = tmp_path / "run"
    assert _discover(out, model=model) == 0
    assert _discover(out, model=model) == 0  # the same file: resumes (already finished)
    torch.manual_seed(2)
    torch.save(timm.create_model("vit_tiny_patch16_224", num_classes=16, **TINY).state_dict(),
               weights)
    assert _discover(out, model=model) == 2
    assert "content" in _error(capsys)


def test_an_empty_discovery_warns(tmp_path):
    """Low item: a discovery that keeps nothing says so."""
    from subind.engine.protocol import EmptySubnetworkWarning

    with pytest.warns(EmptySubnetworkWarning, match="empty"):
        assert main(["discover", *_vit(), "--data", "experiment:vision/pooled", "--lambdas",
                     "1e-5", "--epochs", "1", "--batch-size", "64", "--mask-init", "-5",
                     "--no-progress", "--no-controls", "--out", str(tmp_path / "run")]) == 0


def test_mean_and_std_need_three_finite_numbers(tmp_path, capsys):
    images = _folder(tmp_path / "images", ["a", "b", "c"])
    for extra, message in ((["--mean", "1,2"], "--mean needs three numbers (R,G,B)"),
                           (["--std", "0.5,0,0.5"], "--std must be three finite positive")):
        assert _discover(tmp_path / "run", *extra, model=_vit(3),
                         data=f"imagefolder:{images}") == 2
        assert message in _error(capsys)
    assert not (tmp_path / "run").exists()


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import subind.commands.discover as discover_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(discover_cli, "_run", interrupted)
    assert _discover(tmp_path / "run") == 130
    assert "run the same command again to resume" in _error(capsys)


def test_an_hf_directory_whose_weights_do_not_fit_is_refused(tmp_path, capsys):
    """The weights inside hf:DIR load strictly: a model built with another
    layer count than the weights have is not silently part random."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=60,
                               n_positions=8)).save_pretrained(tmp_path / "lm")
    out = tmp_path / "run"
    assert main(["discover", "--model", f"hf:{tmp_path / 'lm'}", "--model-kwargs",
                 '{"n_layer": 2}', "--data", "experiment:arithmetic/a*b", *FAST, "--out",
                 str(out)]) == 2
    err = _error(capsys)
    assert "do not fit" in err and "transformer.h.1" in err and not out.exists()


def test_an_unbuildable_hf_config_is_named(tmp_path, capsys):
    from transformers import Phi3Config

    Phi3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=60, pad_token_id=99).save_pretrained(
        tmp_path / "phi3")
    assert main(["plan-memory", "--model", f"hf:{tmp_path / 'phi3'}", "--batch", "2"]) == 2
    assert "no model can be built from its config.json" in _error(capsys)


def test_a_damaged_finished_result_is_named_on_resume(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["discover", "--model", "entry:discover_entries:block_mlp", "--data",
            "entry:discover_entries:gaussian_data", "--lambdas", "1e-4,1e-3", "--epochs", "1",
            "--batch-size", "64", "--no-progress", "--no-controls", "--out", str(out)]
    assert main(args) == 0
    (out / "summary.json").unlink()
    result = out / "lambda-0.0001" / "result.json"
    result.write_text(json.dumps({"accuracy": "high"}))
    assert main(args) == 2
    err = _error(capsys)
    assert str(result) in err and "damaged" in err
