"""Run by test_sharded_apis.py under torchrun (gloo): every model-level API on
FSDP2-sharded parameters against the same model unsharded in this process
(float64).  Exits non-zero with a message on the first mismatch."""
import copy
import gc
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import subind_fast as sf


def check(ok, what):
    if not ok:
        print(f"rank {dist.get_rank()}: MISMATCH {what}", file=sys.stderr)
        sys.exit(3)


def model():
    # 7 and 5 rows: uneven shards over 2 ranks (one rank holds fewer rows).
    return nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Conv1d(7, 5, 1), nn.Flatten(),
                         nn.Linear(5, 3)).double()


def shard(m):
    for layer in (m[0], m[2], m[4]):
        fully_shard(layer)
    fully_shard(m)
    return m


def forward(m, x):
    return m[4](m[3](m[2](m[1](m[0](x)).unsqueeze(-1))))


# Continuous sparsification per weight, and the other trained methods and the
# neuron granularity (logits of shape (units, 1, …) sharded along their units).
METHODS = (sf.nn.MaskMethod(), sf.nn.MaskMethod("continuous", "neuron"),
           sf.nn.MaskMethod("hard_concrete"), sf.nn.MaskMethod("gumbel", "neuron", 2))


def main():
    dist.init_process_group("gloo")
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for method in METHODS:
        check_model_apis(method, x)
    check_optimizers(x)
    dist.barrier()


def check_model_apis(method, x):
    torch.manual_seed(0)
    plain = model()
    sf.mask_model(plain, check_coverage="off", init=lambda s: s.normal_(), method=method)
    plain.double()  # the logits too (mask_model makes them fp32)
    sharded = shard(copy.deepcopy(plain))

    # L0: value and gradient
    for m in (plain, sharded):
        sf.set_beta(m, 3.0)
    l0_plain, l0_sharded = sf.l0_penalty(plain), sf.l0_penalty(sharded)
    check(torch.allclose(l0_plain, l0_sharded, rtol=1e-14),
          f"{method}: l0 {l0_plain} vs {l0_sharded}")
    l0_plain.backward()
    l0_sharded.backward()
    for i in (0, 2, 4):
        check(torch.allclose(plain[i].logits.grad, sharded[i].logits.grad.full_tensor()),
              f"l0 gradient of layer {i}")

    # a training forward/backward through the sharded model (the same noise seeds)
    for m in (plain, sharded):
        m.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        forward(m, x).square().sum().backward()
    for i in (0, 2, 4):
        check(torch.allclose(plain[i].logits.grad, sharded[i].logits.grad.full_tensor(),
                             rtol=1e-12), f"{method}: training gradient of layer {i}")

    # density, hard masks, sf.nn.subnetwork_of, to_module
    check(sf.nn.density(plain) == sf.nn.density(sharded), "density")
    for i in (0, 2, 4):
        check(plain[i].density() == sharded[i].density(), f"layer {i} density")
        check(torch.equal(plain[i].hard_mask(), sharded[i].hard_mask()), f"layer {i} hard mask")
        a, b = plain[i].to_module(), sharded[i].to_module()
        check(type(a) is type(b) and torch.equal(a.weight, b.weight)
              and torch.equal(a.bias, b.bias), f"layer {i} to_module")
    check(sf.nn.subnetwork_of(plain) == sf.nn.subnetwork_of(sharded), "from_model")

    # a mean ablation recorded through the sharded model: the same outputs
    if not method.sampled:
        for m in (plain, sharded):
            sf.nn.set_ablation(m, "mean", batches=[x, x.flip(0) * 2], forward=forward)
            sf.set_mode(m, "hard")
        check(torch.allclose(forward(plain, x), forward(sharded, x), rtol=1e-12),
              f"{method}: mean ablation")
        for m in (plain, sharded):
            sf.nn.set_ablation(m, "zero")
            sf.set_mode(m, None)

    # the shift towards a target density: the same constant, the same logits
    shifts = [sf.nn.shift_to_density(m, 0.4) for m in (plain, sharded)]
    check(shifts[0] == shifts[1], f"{method}: shift_to_density {shifts}")
    for i in (0, 2, 4):
        check(torch.equal(plain[i].logits, sharded[i].logits.full_tensor()),
              f"{method}: shifted logits of layer {i}")

    # the exact cut of a target density: the same weights kept, shard by shard
    kept = [sf.nn.keep_exactly(m, 0.3) for m in (plain, sharded)]
    check(kept[0] == kept[1], f"{method}: keep_exactly kept {kept}")
    check(sf.nn.subnetwork_of(plain) == sf.nn.subnetwork_of(sharded), f"{method}: keep_exactly")
    for i in (0, 2, 4):
        check(torch.equal(plain[i].logits, sharded[i].logits.full_tensor()),
              f"{method}: keep_exactly logits of layer {i}")


def check_optimizers(x):
    # MaskedAdamW / MaskedSGD on sharded trainable weights with per-shard frozen bits
    for optimizer, kwargs in ((sf.MaskedAdamW, dict(lr=0.1, weight_decay=0.1)),
                              (sf.MaskedSGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1))):
        torch.manual_seed(1)
        a = model()
        b = shard(copy.deepcopy(a))
        frozen_masks = {name: torch.rand(p.shape) < 0.5 for name, p in a.named_parameters()}
        frozen = lambda m: {p: sf.pack_bits(frozen_masks[n]) for n, p in m.named_parameters()}
        opt_a = optimizer(list(a.parameters()), frozen=frozen(a), **kwargs)
        opt_b = optimizer(list(b.parameters()), frozen=frozen(b), **kwargs)
        start = {n: p.detach().clone() for n, p in a.named_parameters()}
        for _ in range(3):
            for m, opt in ((a, opt_a), (b, opt_b)):
                opt.zero_grad(set_to_none=True)
                forward(m, x).square().sum().backward()
                opt.step()
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            whole = pb.full_tensor()
            check(torch.allclose(pa, whole, rtol=1e-12, atol=1e-14),
                  f"{optimizer.__name__} step of {name}")
            mask = frozen_masks[name]
            check(torch.equal(whole[mask], start[name][mask]),
                  f"{optimizer.__name__}: frozen entries of {name} moved")


if __name__ == "__main__":
    main()
    # Destroy the group only once main()'s models, optimizers and FSDP state are gone:
    # gloo work objects still referenced at teardown can abort the process.
    gc.collect()
    dist.destroy_process_group()
