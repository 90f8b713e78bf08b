"""MaskedAdamW / MaskedSGD in lockstep with torch.optim: free entries follow
torch to fp32 tolerance, frozen entries and their state stay bit-identical,
across a state_dict save/load midway; on every kernel backend (the Triton
kernels on CPU tensors under the interpreter)."""
import io

import pytest
import torch

import subind_fast as sf
from subind_fast import MaskedAdamW, MaskedSGD
from subind_fast.bits import pack_bits

SHAPES = [(13, 17), (9,), (2, 3, 5), (1,)]
STEPS = 24


@pytest.fixture(params=["cpu", "reference", "triton"])
def kernel_backend(request, cpu_kernels):
    """The optimizer kernels of CPU tensors: the registered C++ op, or a Python
    backend's registered in its place (Triton runs on CPU tensors under the
    interpreter)."""
    if request.param == "triton":
        pytest.importorskip("triton")
        from subind_fast.ops.cuda.triton_launch import TritonKernels

        cpu_kernels(TritonKernels(), ["adamw_step", "sgd_step"])
    elif request.param == "reference":
        from subind_fast.ops import reference

        cpu_kernels(reference, ["adamw_step", "sgd_step"])
    return request.param


def _setup(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    masks = [torch.rand(s, generator=gen) < 0.4 for s in SHAPES]
    masks[-1] = torch.zeros(SHAPES[-1], dtype=torch.bool)  # a parameter with nothing frozen
    ours = [torch.nn.Parameter(t.clone()) for t in base]
    theirs = [torch.nn.Parameter(t.clone()) for t in base]
    frozen = {p: pack_bits(m) for p, m in zip(ours[:-1], masks[:-1])}  # last: not in the set
    return base, masks, ours, theirs, frozen, gen


def _reload(opt_cls, params, frozen, kwargs, opt):
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh = opt_cls(params, frozen=None, **kwargs)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def _lockstep(opt_cls, torch_cls, kwargs, state_keys, dtype=torch.float32):
    base, masks, ours, theirs, frozen, gen = _setup(dtype)
    opt = opt_cls(ours, frozen=frozen, **kwargs)
    ref = torch_cls(theirs, **kwargs)
    for step in range(STEPS):
        for p, q in zip(ours, theirs):
            g = torch.randn(p.shape, generator=gen, dtype=dtype)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        if step == STEPS // 2:
            opt = _reload(opt_cls, ours, frozen, kwargs, opt)
        for i, (p, q, m, b) in enumerate(zip(ours, theirs, masks, base)):
            torch.testing.assert_close(p[~m], q[~m], rtol=1e-5, atol=1e-6,
                                       msg=lambda s: f"step {step}, param {i}: {s}")
            assert torch.equal(p[m], b[m]), f"step {step}: frozen entries of param {i} moved"
            for key in state_keys:
                if key in opt.state[p]:
                    assert torch.all(opt.state[p][key][m] == 0), f"frozen {key} changed"
                    torch.testing.assert_close(opt.state[p][key][~m], ref.state[q][key][~m],
                                               rtol=1e-5, atol=1e-6)
    return opt


@pytest.mark.parametrize("kwargs", [
    dict(lr=1e-2),
    dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
    dict(lr=1e-2, weight_decay=0.05, amsgrad=True),
])
def test_adamw_lockstep(kernel_backend, kwargs):
    opt = _lockstep(MaskedAdamW, torch.optim.AdamW, kwargs,
                    ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"])
    assert opt.state[opt.param_groups[0]["params"][0]]["frozen_bits"].dtype == torch.uint8


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=1e-3),
])
def test_sgd_lockstep(kernel_backend, kwargs):
    _lockstep(MaskedSGD, torch.optim.SGD, kwargs, ["momentum_buffer"])


def test_float64_parameters(kernel_backend):
    if kernel_backend == "triton":
        pytest.skip("the interpreter run covers fp32; fp64 kernels are the same code")
    _lockstep(MaskedAdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1),
              ["exp_avg", "exp_avg_sq"], dtype=torch.float64)


def test_param_groups_schedulers_zero_grad_and_missing_grads():
    a, b = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3))
    opt = MaskedSGD([{"params": [a], "lr": 0.1}, {"params": [b]}], lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    b_before = b.detach().clone()
    a.grad = torch.ones(4)
    opt.step()  # b has no gradient: untouched
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert torch.equal(b, b_before)
    opt.zero_grad()
    assert a.grad is None


def test_transposed_parameter_is_updated_in_place():
    p = torch.nn.Parameter(torch.randn(6, 4).t())  # non-contiguous
    q = torch.nn.Parameter(p.detach().clone())
    frozen = {p: pack_bits(torch.zeros(4, 6, dtype=torch.bool))}
    p.grad = torch.ones(4, 6)
    q.grad = torch.ones(4, 6)
    MaskedAdamW([p], frozen=frozen, lr=0.1).step()
    torch.optim.AdamW([q], lr=0.1).step()
    torch.testing.assert_close(p, q)


def test_bad_arguments_are_rejected():
    p = torch.nn.Parameter(torch.randn(5))
    stranger = torch.nn.Parameter(torch.randn(5))
    with pytest.raises(ValueError, match="names tensor of shape \\(5,\\), which this optimizer does not hold"):
        MaskedAdamW([p], frozen={stranger: pack_bits(torch.ones(5, dtype=torch.bool))})
    with pytest.raises(ValueError, match="must be 1 uint8 bytes"):
        MaskedAdamW([p], frozen={p: torch.zeros(3, dtype=torch.uint8)})
    with pytest.raises(TypeError, match="float32/float64 parameters"):
        MaskedAdamW([torch.zeros(3, dtype=torch.long)])
    with pytest.raises(TypeError, match="float32/float64 parameters"):
        MaskedSGD([torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))])
    with pytest.raises(ValueError, match="lr must be a number"):
        MaskedAdamW([p], lr=-1.0)
    with pytest.raises(ValueError, match="betas\\[1\\] must be a number in \\[0.0, 1.0\\)"):
        MaskedAdamW([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="nesterov momentum needs"):
        MaskedSGD([p], nesterov=True)


def test_transfer_frozen_set_names_parameters_in_errors():
    model = torch.nn.Linear(3, 2)
    sub = sf.Subnetwork.from_masks({"weight": torch.ones(2, 3, dtype=torch.bool)})
    frozen = sf.transfer(sub, torch.nn.Linear(3, 2), model)
    with pytest.raises(ValueError, match="the frozen set names weight, which this optimizer"):
        MaskedAdamW([model.bias], frozen=frozen)


def test_a_frozen_set_keyed_by_names_is_refused_clearly():
    weight = torch.nn.Parameter(torch.randn(4, 4))
    with pytest.raises(TypeError, match="frozen maps parameters"):
        sf.MaskedAdamW([weight], frozen={"weight": torch.zeros(2, dtype=torch.uint8)})
