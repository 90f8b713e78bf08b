"""`subind analyze`: tables, CSVs and plots from subnetwork files."""
import csv
import json

import pytest
import torch

import subind_fast as sf
from subind_fast import analysis as A
from subind.commands import main


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


def _random_masks(model, names, density, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(model.get_parameter(n).shape, generator=g) < density for n in names}


def test_heads_of_grouped_query_attention_in_llama_and_qwen2(tmp_path, capsys):
    """Defect 12: transformers 5 attention classes state their head counts in
    their config; under grouped-query attention k/v hold fewer heads, each
    shared by a group of query heads."""
    from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    from subind_fast import analysis as A

    for config_class, model_class in ((LlamaConfig, LlamaForCausalLM),
                                      (Qwen2Config, Qwen2ForCausalLM)):
        config = config_class(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
        model = model_class(config)
        heads = A.attention_heads(model)
        assert list(heads) == ["model.layers.0.self_attn"]
        slices = {s.parameter.rpartition(".")[0].rpartition(".")[2]: s
                  for s in heads["model.layers.0.self_attn"]}
        assert set(slices) == {"q_proj", "k_proj", "v_proj", "o_proj"}
        assert (slices["k_proj"].heads, slices["k_proj"].group) == (2, 2)
        assert (slices["q_proj"].heads, slices["q_proj"].group) == (4, 1)
        prefix = "model.layers.0.self_attn"
        names = [f"{prefix}.{p}.weight" for p in slices]
        a = _random_masks(model, names, 0.3, 0)
        table = A.head_overlap(*(sf.Subnetwork.from_masks(a),) * 2, heads)
        d = 32 // 4
        for head in range(4):  # query head h reads k/v head h // 2
            kv = head // 2
            entries = torch.cat([a[f"{prefix}.q_proj.weight"][head * d:(head + 1) * d].reshape(-1),
                                 a[f"{prefix}.k_proj.weight"][kv * d:(kv + 1) * d].reshape(-1),
                                 a[f"{prefix}.v_proj.weight"][kv * d:(kv + 1) * d].reshape(-1),
                                 a[f"{prefix}.o_proj.weight"][:, head * d:(head + 1) * d]
                                 .reshape(-1)])
            row = table[(prefix, head)]
            assert (row.size, row.a) == (entries.numel(), int(entries.sum()))


def test_analyze_model_options_are_checked(tmp_path, capsys):
    """Defect 13: --model-kwargs reaches the model; a model that does not fit
    the subnetworks, and model options without --model, are refused."""

    import timm

    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=4)
    model = timm.create_model("vit_tiny_patch16_224", **kwargs)
    names = ["blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight"]
    files = [_save(tmp_path / "a.safetensors", _random_masks(model, names, 0.3, 0))]
    out = tmp_path / "out"
    vit = ["--model", "timm:vit_tiny_patch16_224", "--weights", "random"]
    assert main(["analyze", *files, "--out", str(out), *vit]) == 2  # the default ViT-Tiny
    err = capsys.readouterr().err
    assert "does not fit --model timm:vit_tiny_patch16_224" in err and "qkv" in err
    assert not out.exists()
    assert main(["analyze", *files, "--out", str(out), *vit, "--model-kwargs",
                 json.dumps(kwargs)]) == 0
    assert (out / "heads.csv").read_text().count("\n") == 1 + 2  # block 0's 2 heads
    for extra, message in ((["--weights", "w.pt"], "--weights needs --model"),
                           (["--model-kwargs", "{}"], "--model-kwargs needs --model"),
                           (["--seed", "3"], "--seed draws"),
                           ([*vit, "--hf-class", "causal-lm"], "--hf-class applies")):
        assert main(["analyze", *files, "--out", str(tmp_path / "o2"), *extra]) == 2
        assert message in capsys.readouterr().err


def test_inverse_mask_test_of_a_dense_subnetwork_reports_the_complement_as_unmatched(
        tmp_path, capsys):
    """Defect 9: a layer that keeps more than half its weights has no same-size
    complement sample; the control is marked, not fatal, and nothing is half written."""
    from subind.experiments.arithmetic.discovery_sets import quick_gpt2

    model = quick_gpt2()
    names = [f"transformer.h.{i}.mlp.c_fc.weight" for i in range(2)]
    masks = _random_masks(model, names, 0.3, 0)
    masks[names[0]] = _random_masks(model, names[:1], 0.9, 1)[names[0]]  # dense layer
    files = [_save(tmp_path / "dense.safetensors", masks)]
    out = tmp_path / "out"
    assert main(["analyze", *files, "--out", str(out), "--model",
                 "entry:subind.experiments.arithmetic.discovery_sets:quick_gpt2",
                 "--weights", "random", "--eval-data", "experiment:arithmetic/a*b"]) == 0
    text = (out / "summary.md").read_text()
    assert "| without complement * |" in text
    assert "not size-matched (not applicable) in 1 of 2 parameters" in text
    assert names[0] in text.split("not size-matched")[1] and names[1] not in \
        text.split("not size-matched")[1]
    capsys.readouterr()


def test_empty_masks_have_iom_one_like_iou(tmp_path):
    """Low item: two empty masks are identical — IoU 1, IoM 1 (P_reuse 1)."""
    from subind_fast import analysis as A

    empty = sf.Subnetwork.from_masks({"w": torch.zeros(4, dtype=torch.bool)})
    row = A.overlap(empty, empty)[A.TOTAL]
    assert (row.iou, row.iom, A.p_reuse(empty, empty)) == (1.0, 1.0, 1.0)
    full = sf.Subnetwork.from_masks({"w": torch.ones(4, dtype=torch.bool)})
    assert (A.overlap(empty, full)[A.TOTAL].iou, A.iom(empty, full)) == (0.0, 0.0)


def _mlp_subnetwork(tmp_path, metadata=None):
    import discover_entries

    model = discover_entries.block_mlp()
    sub = sf.Subnetwork.from_masks(
        {name: torch.rand(p.shape, generator=torch.Generator().manual_seed(1)) < 0.4
         for name, p in model.named_parameters() if p.dim() == 2}, metadata or {})
    return str(sub.save(tmp_path / "sub.safetensors"))


MLP = ["--model", "entry:discover_entries:block_mlp"]


def test_another_ablation_is_another_analysis(tmp_path, capsys):
    """--ablation is part of an analysis folder's identity: a rerun with
    another one is refused, and the first result stays."""
    sub = _mlp_subnetwork(tmp_path)
    out = tmp_path / "an"
    args = ["analyze", sub, "--out", str(out), *MLP, "--eval-data",
            "entry:discover_entries:gaussian_odd_eval"]
    assert main(args) == 0
    first = (out / "summary.md").read_text()
    assert main([*args, "--ablation", "corrupted"]) == 2
    assert "ablation" in capsys.readouterr().err
    assert (out / "summary.md").read_text() == first


def test_corrupted_inverse_mask_test_never_meets_a_batch_of_one(tmp_path, capsys):
    from subind.commands.analyze import even_batches

    assert sorted(len(b) for b in even_batches(513, 512)) == [256, 257]
    assert [len(b) for b in even_batches(1024, 512)] == [512, 512]
    assert sum(even_batches(1000, 7), []) == list(range(1000))
    sub = _mlp_subnetwork(tmp_path, {"ablation": "mean"})
    assert main(["analyze", sub, "--out", str(tmp_path / "an"), *MLP, "--eval-data",
                 "entry:discover_entries:gaussian_odd_eval", "--ablation", "corrupted"]) == 0
    text = capsys.readouterr().out
    assert "found with its removed weights mean-ablated" in text  # said, not hidden


def test_a_second_analysis_on_a_folder_in_use_is_refused_before_it_computes(tmp_path, capsys):
    from subind.engine.files import locked

    sub = _mlp_subnetwork(tmp_path)
    out = tmp_path / "an"
    with locked(out / "run", wait=False) as mine:  # as if another analysis were running
        assert mine
        assert main(["analyze", sub, "--out", str(out)]) == 2
        assert "in use by another subind analyze process" in capsys.readouterr().err
        assert not (out / "manifest.json").exists()
    assert main(["analyze", sub, "--out", str(out)]) == 0


def test_a_failed_analysis_leaves_no_folder_behind(tmp_path, capsys):
    sub = _mlp_subnetwork(tmp_path)
    out = tmp_path / "an"
    assert main(["analyze", sub, "--out", str(out), "--model", "timm:resnet18", "--weights",
                 "random"]) == 2  # the subnetwork does not fit this model
    assert "does not fit" in capsys.readouterr().err and not out.exists()


def test_specificity_scores_every_subnetwork_on_every_subtask(tmp_path, capsys):
    import csv

    import discover_entries

    files, weights = discover_entries.random_subnetwork_files(tmp_path, ("first", "second"),
                                                              0.5, seed=2)
    common = ["--model", "entry:discover_entries:block_mlp", "--weights", str(weights)]
    sets = ["--eval-data", "entry:discover_entries:gaussian_data",
            "--eval-data", "entry:discover_entries:gaussian_train_only"]
    assert main(["analyze", *files, "--out", str(tmp_path / "s"), *common, *sets,
                 "--specificity"]) == 0
    text = capsys.readouterr().out
    assert "| (intact model) | – |" in text
    assert text.count("| first | entry:discover_entries:gaussian_data | ") == 1
    with open(tmp_path / "s" / "specificity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    scores = {r["subnetwork"]: float(r["alone"]) for r in rows if r["subtask"] == "(score)"}
    alone = {(r["subnetwork"], r["subtask"]): float(r["alone"]) for r in rows
             if r["alone"] and r["subtask"] != "(score)"}
    own = {"first": "entry:discover_entries:gaussian_data",
           "second": "entry:discover_entries:gaussian_train_only"}
    for label, task in own.items():
        other = next(t for t in own.values() if t != task)
        assert scores[label] == pytest.approx(alone[(label, task)] - alone[(label, other)],
                                              abs=1e-6)
    # The first subnetwork alone on the evaluation split, computed directly.
    kept = sf.Subnetwork.load(files[0]).ablate(discover_entries.block_mlp(), "keep")
    x, y = discover_entries.gaussian_data()["eval"].tensors
    assert alone[("first", own["first"])] == pytest.approx(
        float((kept(x).argmax(-1) == y).double().mean()), abs=1e-6)

    # every number again in specificity.json and, per subnetwork, in its copy's metadata
    record = json.loads((tmp_path / "s" / "specificity.json").read_text())
    for label, task in own.items():
        mine = record["subnetworks"][label]
        assert mine["own_subtask"] == task and mine["score"] == pytest.approx(scores[label],
                                                                               abs=1e-6)
        copy = sf.Subnetwork.load(tmp_path / "s" / "subnetworks" / f"{label}.safetensors")
        assert copy == sf.Subnetwork.load(files[list(own).index(label)])
        assert copy.metadata["specificity"]["score"] == mine["score"]
        assert copy.metadata["specificity"]["alone"] == mine["alone"]
        assert copy.metadata["specificity"]["intact"] == record["intact"]
    assert record["eval_data"] == {task: task for task in own.values()}
    # the scores' intervals resample each subtask's examples (the tasks score each example)
    for label in own:
        low, high = record["subnetworks"][label]["score_ci"]
        assert low <= record["subnetworks"][label]["score"] <= high and low < high
    assert set(record["examples"]) == set(own.values())
    assert "95 % percentile bootstrap intervals over the evaluation examples" in text
    # the overlap between the two, against chance
    a, b = (sf.Subnetwork.load(f) for f in files)
    pair = record["subnetworks"]["first"]["overlap_with"]["second"]
    assert pair["iou"] == pytest.approx(A.overlap(a, b)[A.TOTAL].iou)
    assert pair["chance_iou"] == pytest.approx(A.chance_overlap(a, b).iou)
    assert f"| first | second | {pair['iou']:.4f} |" in text
    assert "specificity" not in sf.Subnetwork.load(files[0]).metadata  # inputs untouched
    # `subind report` prints the analysis again
    assert main(["report", str(tmp_path / "s")]) == 0
    assert "| (intact model) | – |" in capsys.readouterr().out

    assert main(["analyze", *files, "--out", str(tmp_path / "bad"), *common, sets[0], sets[1],
                 "--specificity"]) == 2
    assert "one --eval-data set per subnetwork" in capsys.readouterr().err
    assert main(["analyze", *files, "--out", str(tmp_path / "bad"), *common, *sets,
                 "--specificity", "--labels", "a*b,a/b"]) == 2
    assert "would both be saved as subnetworks/a_b.safetensors" in capsys.readouterr().err
