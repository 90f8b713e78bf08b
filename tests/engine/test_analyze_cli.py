"""`subind analyze`: tables, CSVs and plots from subnetwork files."""
import csv

import torch

import subind_fast as sf
from subind.cli import main


def _save(path, masks):
    sf.Subnetwork.from_masks(masks).save(path)
    return str(path)


def test_analyze_two_subtasks_and_stability(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    shapes = {"transformer.h.0.attn.c_attn.weight": (8, 24),
              "transformer.h.1.mlp.c_fc.weight": (8, 32)}
    a = {n: torch.rand(s, generator=g) < 0.3 for n, s in shapes.items()}
    b = {n: torch.rand(s, generator=g) < 0.5 for n, s in shapes.items()}
    files = [_save(tmp_path / "mul.safetensors", a), _save(tmp_path / "square.safetensors", b)]
    out = tmp_path / "analysis"
    assert main(["analyze", *files, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mul vs square" in text and "| h.0 |" in text and "P_specialize" in text
    with open(out / "overlap.csv") as f:
        rows = {r["parameter"]: r for r in csv.DictReader(f)}
    ref = sf.Subnetwork.from_masks(a).iou(sf.Subnetwork.from_masks(b))
    assert abs(float(rows["total"]["iou"]) - ref) < 1e-6
    assert (out / "blocks.png").stat().st_size > 0 and (out / "sharing.png").stat().st_size > 0
    assert main(["analyze", *files, files[0], "--labels", "s0,s1,s2", "--stability",
                 "--out", str(tmp_path / "seeds")]) == 0
    assert "stability over 3 seeds" in capsys.readouterr().out


def test_analyze_refuses_one_file_and_mismatched_models(tmp_path, capsys):
    one = _save(tmp_path / "a.safetensors", {"w": torch.ones(3, dtype=torch.bool)})
    other = _save(tmp_path / "b.safetensors", {"v": torch.ones(3, dtype=torch.bool)})
    assert main(["analyze", one, "--out", str(tmp_path / "o")]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["analyze", one, other, "--out", str(tmp_path / "o")]) == 2
    assert "different parameters" in capsys.readouterr().err
