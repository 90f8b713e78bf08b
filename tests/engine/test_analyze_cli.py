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


def test_analyze_one_file_gives_its_density_and_refuses_mismatched_models(tmp_path, capsys):
    one = _save(tmp_path / "a.safetensors", {"h.0.w": torch.tensor([True, False, True, True])})
    other = _save(tmp_path / "b.safetensors", {"v": torch.ones(3, dtype=torch.bool)})
    assert main(["analyze", one, "--out", str(tmp_path / "o")]) == 0
    assert "| h.0 | 0.7500 |" in capsys.readouterr().out
    assert (tmp_path / "o" / "blocks.png").stat().st_size > 0
    assert main(["analyze", one, "--stability", "--out", str(tmp_path / "o")]) == 2
    assert "at least two seeds" in capsys.readouterr().err
    assert main(["analyze", one, other, "--out", str(tmp_path / "o2")]) == 2
    assert "different parameters" in capsys.readouterr().err


def test_head_level_density_and_overlap_of_gpt2_attention(tmp_path, capsys):
    from subind.experiments.arithmetic.discovery_sets import quick_gpt2

    model = quick_gpt2()
    heads = model.config.n_head
    d = model.config.n_embd // heads
    g = torch.Generator().manual_seed(0)
    masks = [{f"transformer.h.{i}.attn.{p}.weight": torch.rand(
        model.get_parameter(f"transformer.h.{i}.attn.{p}.weight").shape, generator=g) < q
        for i in range(2) for p in ("c_attn", "c_proj")} for q in (0.3, 0.6)]
    files = [_save(tmp_path / f"{n}.safetensors", m) for n, m in zip(("x", "y"), masks)]
    out = tmp_path / "heads"
    assert main(["analyze", *files, "--out", str(out), "--model",
                 "entry:subind.experiments.arithmetic.discovery_sets:quick_gpt2",
                 "--weights", "random"]) == 0
    capsys.readouterr()
    with open(out / "heads.csv") as f:
        rows = {(r["module"], int(r["head"])): r for r in csv.DictReader(f)}
    assert len(rows) == 2 * heads
    for (module, head), row in rows.items():
        def head_entries(m):  # q, k and v columns of the head in c_attn, its rows of c_proj
            qkv = m[f"{module}.c_attn.weight"]
            cols = [qkv[:, c * heads * d + head * d:c * heads * d + (head + 1) * d]
                    for c in range(3)]
            return torch.cat([c.reshape(-1) for c in cols]
                             + [m[f"{module}.c_proj.weight"][head * d:(head + 1) * d].reshape(-1)])
        x, y = head_entries(masks[0]), head_entries(masks[1])
        assert abs(float(row["density_x"]) - x.double().mean().item()) < 1e-6
        assert abs(float(row["iou"]) - (x & y).sum().item() / (x | y).sum().item()) < 1e-6
    assert (out / "heads.png").stat().st_size > 0
