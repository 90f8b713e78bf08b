"""`subind imagenet16` on tiny fake ImageNet trees (both layouts), and the
paper preset's folder-data path end to end on CPU."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from subind.commands import main
from subind.shape_bias.categories import CATEGORIES, GEIRHOS_WNIDS
from subind.shape_bias.imagenet16 import build

DATA = Path(__file__).parent / "data" / "geirhos"
UNRELATED = "n01440764"  # tench: in ImageNet, in none of the 16 categories


def _png(path: Path, seed: int, size: int = 40) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _wnid(category: str) -> str:
    return GEIRHOS_WNIDS[category][0]


def fake_imagenet(root: Path, layout: str, per_class: int = 6) -> Path:
    seed = 0
    if layout == "imagefolder":
        train, val = root / "train", root / "val"
    else:
        train = root / "ILSVRC" / "Data" / "CLS-LOC" / "train"
        val = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    solution = []
    for category in (*CATEGORIES, None):
        wnid = _wnid(category) if category else UNRELATED
        for i in range(per_class):
            seed += 1
            _png(train / wnid / f"{wnid}_{i}.JPEG", seed)
        seed += 1
        if layout == "imagefolder":
            _png(val / wnid / f"ILSVRC2012_val_{seed:08d}.JPEG", seed)
        else:
            _png(val / f"ILSVRC2012_val_{seed:08d}.JPEG", seed)
            solution.append((f"ILSVRC2012_val_{seed:08d}", f"{wnid} 1 2 3 4"))
    if solution:
        with open(root / "LOC_val_solution.csv", "w", newline="") as f:
            csv.writer(f).writerows([("ImageId", "PredictionString"), *solution])
    return root


@pytest.mark.parametrize("layout", ["imagefolder", "kaggle"])
def test_builder_selects_the_16_classes_and_balanced_disjoint_subsets(tmp_path, layout):
    root = fake_imagenet(tmp_path / "imagenet", layout)
    out = tmp_path / "in16"
    counts = build(root, out, discovery_per_class=3, selection_per_class=2, seed=0)
    assert counts["layout"] == layout
    for category in CATEGORIES:
        c = counts["categories"][category]
        assert (c["train"], c["discovery"], c["selection"], c["val"]) == (4, 3, 2, 1)
        train = {p.name for p in (out / "train" / category).iterdir()}
        selection = {p.name for p in (out / "selection" / category).iterdir()}
        discovery = {p.name for p in (out / "discovery" / category).iterdir()}
        assert not train & selection and discovery <= train
        assert all(name.startswith(_wnid(category)) for name in train | selection)
        assert (out / "val" / category).is_dir()
    assert sorted(p.name for p in (out / "train").iterdir()) == list(CATEGORIES)
    assert not list(out.rglob(f"{UNRELATED}*"))
    assert json.loads((out / "imagenet16.json").read_text())["seed"] == 0
    with pytest.raises(ValueError, match="not empty"):
        build(root, out)


def test_builder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="layout"):
        build(tmp_path, tmp_path / "out")
    (tmp_path / "train" / _wnid("cat")).mkdir(parents=True)
    with pytest.raises(ValueError, match="no training images"):
        build(tmp_path, tmp_path / "out")


def test_paper_preset_folder_data_on_cpu(tmp_path, capsys):
    import timm

    root = fake_imagenet(tmp_path / "imagenet", "imagefolder", per_class=5)
    data = tmp_path / "in16"
    assert main(["imagenet16", str(root), str(data), "--discovery-per-class", "3",
                 "--selection-per-class", "2"]) == 0
    for split in ("discovery", "selection", "val"):
        assert main(["mean-pool", str(data / split), str(data / f"{split}-pooled"),
                     "--method", "slic", "--segments", "8", "--preview", "0"]) == 0
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights)
    out = tmp_path / "paper"
    args = ["vision", "--preset", "paper", "--out", str(out), "--data", str(data),
            "--cue-conflict", str(DATA / "cue-conflict"), "--resnet18-weights", str(weights),
            "--archs", "resnet18", "--device", "cpu", "--image-size", "32", "--workers", "0",
            "--conditions", "subtask_induction,scratch,data_mixture,pretrained",
            "--discovery-epochs", "1", "--lambdas", "1e-7", "--transfer-epochs", "1",
            "--batch-size", "16", "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    record = json.loads((out / "runs" / "data_mixture" / "resnet18-N0-s0.json").read_text())
    assert record["train_set_size"] == 16 * 3 + 16 * 3  # train + pooled discovery images
    assert record["cue_conflict"]["images"] == 4
    assert (out / "subnetworks" / "resnet18.safetensors").is_file()
    assert main(["report", str(out)]) == 0
    assert "data mixture" in capsys.readouterr().out
    assert main(args[:-1] + ["--resnet18-weights", str(tmp_path / "none.pth")]) == 2
    assert "resnet18_weights" in capsys.readouterr().err
