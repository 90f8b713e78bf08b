"""The discovery memory planner (engine/memory_plan.py) against PyTorch's own
MemTracker under FakeTensorMode: one real discovery step (forward, backward,
Adam on the logits) of small timm models, fused layers and eager composite."""
import pytest
import timm
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

import subind_fast as sf
from subind.engine import memory_plan as mp
from subind_fast.testing.baselines import eager_composite
from subind.engine.distributed import blocks_of

MODELS = {
    "vit": lambda: timm.create_model("vit_tiny_patch16_224", img_size=64, depth=4),
    "resnet": lambda: timm.create_model("resnet18"),
}
INPUT = {"vit": (3, 64, 64), "resnet": (3, 96, 96)}


class _NoHook:
    def remove(self):
        pass


def tracked_peak(name: str, provider: str, batch: int) -> int:
    """MemTracker's peak over the second of two discovery steps."""
    with torch.device("meta"):
        model = MODELS[name]()
    if provider == "ours":
        sf.mask_model(model, check_coverage="off")
    else:
        eager_composite(model)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = model.to_empty(device="cpu")
        x = torch.randn(batch, *INPUT[name])
        logits = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(logits)

        def step():
            model(x).sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # Adam's state exists from here on, as in every later step
        tracker = MemTracker()
        for p in model.parameters():  # MemTracker hooks every gradient; frozen weights have none
            if not p.requires_grad:
                tracker._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
        tracker.track_external(model, opt)
        with tracker:
            step()
        return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


def spec(name: str, **kw) -> mp.PlanInputs:
    return mp.PlanInputs(build=MODELS[name],
                         make_input=lambda b: torch.randn(b, *INPUT[name], device="meta"),
                         dtype=torch.float32, blocks=blocks_of, **kw)


@pytest.mark.parametrize("name", ["vit", "resnet"])
@pytest.mark.parametrize("provider", ["ours", "eager"])
def test_planned_peak_is_within_10_percent_of_memtracker(name, provider):
    batch = 8
    usage, grads = mp.plan(provider, spec(name), batch)
    planned, tracked = usage.peak(grads), tracked_peak(name, provider, batch)
    assert abs(planned - tracked) / tracked < 0.10, (planned / 2**20, tracked / 2**20)


def test_fused_layers_keep_less_than_the_composites():
    s = spec("vit")
    ours, _ = mp.plan("ours", s, 4)
    eager, _ = mp.plan("eager", s, 4)
    compiled, _ = mp.plan("compile", s, 4)
    weights = sum(p.numel() for p in MODELS["vit"]().parameters() if p.dim() > 1)
    # eager keeps σ(βs) and W_eff (fp32) per masked weight: ≥ 8 B/weight more than ours
    assert eager.activations - ours.activations >= 7.5 * weights * 0.9
    assert ours.activations < compiled.activations < eager.activations


def test_checkpointing_and_sharding_shrink_the_plan():
    plain, _ = mp.plan("ours", spec("vit"), 8)
    ckpt, _ = mp.plan("ours", spec("vit", checkpoint=True), 8)
    assert ckpt.activations < plain.activations
    fsdp, _ = mp.plan("ours", spec("vit", world_size=4, strategy="fsdp2"), 8)
    assert fsdp.static < plain.static
    ddp, _ = mp.plan("ours", spec("vit", world_size=4, strategy="ddp"), 8)
    assert ddp.static > plain.static


def test_largest_batch_fits_and_one_more_does_not():
    s = spec("vit")
    budget = 64 * 2**20
    best, _, grads = mp.largest_batch("ours", s, budget, 4)
    assert best > 1
    fits, g = mp.plan("ours", s, best)
    over, _ = mp.plan("ours", s, best + 1)
    assert fits.peak(g) <= budget * 1.02 and over.peak(g) > budget * 0.98


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "mistral", "gemma2", "phi3",
                                    "entry"])
def test_plan_memory_runs_on_transformers_causal_lms(family, tmp_path, capsys):
    """The default providers (ours, eager, compile) on GPT-2, Llama, Qwen2,
    Mistral, Gemma-2 and Phi-3 directories holding only a config.json
    (grouped-query attention) and on the arithmetic entry point."""
    from transformers import (Gemma2Config, GPT2Config, LlamaConfig, MistralConfig,
                              Phi3Config, Qwen2Config)

    gqa = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
               max_position_embeddings=32)

    from subind.commands import main

    if family == "entry":
        spec = "entry:subind.experiments.arithmetic.discovery_sets:quick_gpt2"
    else:
        config = {"gpt2": lambda: GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64,
                                             n_positions=32, bos_token_id=0, eos_token_id=0),
                  "llama": lambda: LlamaConfig(hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, vocab_size=64,
                                               max_position_embeddings=32),
                  "qwen2": lambda: Qwen2Config(**gqa),
                  "mistral": lambda: MistralConfig(**gqa),
                  "gemma2": lambda: Gemma2Config(**gqa, head_dim=8),
                  "phi3": lambda: Phi3Config(**gqa, pad_token_id=0, bos_token_id=1,
                                             eos_token_id=1)}[family]()
        config.save_pretrained(tmp_path / family)
        spec = f"hf:{tmp_path / family}"
    assert main(["plan-memory", "--model", spec, "--batch", "4", "--dtype", "fp32"]) == 0
    captured = capsys.readouterr()
    rows = {line.split()[0]: line.split() for line in captured.out.splitlines()[3:]}
    assert set(rows) == {"ours", "eager", "compile"}
    assert all(int(row[-1]) >= 4 for row in rows.values())  # batch 4 fits in 80 GiB
    assert "Exception ignored" not in captured.err
    assert main(["plan-memory", "--model", spec, "--batch", "4", "--seq-len", "10000"]) == 2
    assert "--seq-len must be in [1, " in capsys.readouterr().err
    if family != "entry":  # a token model: --input-shape would feed it floats
        assert main(["plan-memory", "--model", spec, "--batch", "4", "--input-shape", "16"]) == 2
        assert "takes token ids (give --seq-len)" in capsys.readouterr().err


def test_a_blocks_glob_that_matches_nested_modules_takes_the_outermost():
    """'layer*' matches resnet18's layer1..4 and the blocks inside them: the
    inner ones are part of their outer block, never counted twice."""
    import timm

    from subind.engine.distributed import blocks_of

    model = timm.create_model("resnet18", pretrained=False)
    assert blocks_of(model, "layer*") == [model.layer1, model.layer2, model.layer3, model.layer4]


@pytest.mark.parametrize("extra, message", [
    (["--gpu-mem", "inf"], "--gpu-mem must be a finite number"),
    (["--gpu-mem", "nan"], "--gpu-mem must be a finite number"),
    (["--input-shape=-3,32,32"], "--input-shape sizes must be >= 1"),
    (["--providers", ","], "--providers names none"),
])
def test_plan_memory_names_bad_numbers(extra, message, capsys):
    from subind.commands import main

    assert main(["plan-memory", "--model", "timm:resnet18", "--batch", "2", *extra]) == 2
    assert message in capsys.readouterr().err


def test_checkpointing_nested_blocks_plans_positive_memory():
    """With 'layer*' (outer blocks and the blocks inside them) the plan is the
    outer blocks' plan: no activation counted twice, none negative."""
    nested = mp.PlanInputs(build=MODELS["resnet"],
                           make_input=lambda b: torch.randn(b, *INPUT["resnet"], device="meta"),
                           dtype=torch.float32, blocks=lambda m: blocks_of(m, "layer*"),
                           checkpoint=True)
    outer = mp.PlanInputs(build=MODELS["resnet"],
                          make_input=lambda b: torch.randn(b, *INPUT["resnet"], device="meta"),
                          dtype=torch.float32, checkpoint=True,
                          blocks=lambda m: [m.layer1, m.layer2, m.layer3, m.layer4])
    for provider in ("ours", "eager"):
        planned, _ = mp.plan(provider, nested, 8)
        assert planned.activations > 0
        assert planned == mp.plan(provider, outer, 8)[0]
