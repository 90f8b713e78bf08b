"""CUDA paths through the public API (skipped without a GPU): the dispatched
Triton linear and CUDA/cuDNN conv in fp32/bf16/fp16, opcheck and
torch.compile on the Triton backend, and the compiled CUDA element-wise
kernels.  Run on a GPU machine with `SUBIND_TEST_GPU=1 pytest -m gpu`."""
import pytest
import torch

import subind_fast as sf
from oracle import assert_matches_oracle, composite_conv, composite_linear, leaf, run_with_grads

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _grads_vs_oracle(fn_ours, fn_composite, tensors, dtype):
    logit_dtype = torch.float32

    def cast(ts, dt, ldt, device):
        return [leaf(t.to(device), dt if i != 2 else ldt) for i, t in enumerate(ts)]

    want, want_g = run_with_grads(fn_composite, cast(tensors, torch.float64, torch.float64, "cpu"))
    same, same_g = run_with_grads(fn_composite, cast(tensors, dtype, logit_dtype, "cuda"))
    got, got_g = run_with_grads(fn_ours, cast(tensors, dtype, logit_dtype, "cuda"))
    assert_matches_oracle(got.cpu(), want, same.cpu(), dtype, "output")
    for name, g, o, t in zip(("dx", "dw", "ds", "db"), got_g, want_g, same_g):
        assert_matches_oracle(g.cpu(), o, t.cpu(), dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", [(1, 7, 3), (127, 129, 65), (512, 768, 3072)])
def test_linear_on_cuda(dtype, m, k, n):
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(m, k, generator=gen, dtype=torch.float64),
               torch.randn(n, k, generator=gen, dtype=torch.float64) / k ** 0.5,
               torch.randn(n, k, generator=gen, dtype=torch.float64),
               torch.randn(n, generator=gen, dtype=torch.float64)]
    _grads_vs_oracle(lambda x, w, s, b: sf.masked_linear(x, w, s, 3.0, b),
                     lambda x, w, s, b: composite_linear(x, w, s, 3.0, b), tensors, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_on_cuda(dtype):
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(4, 16, 14, 14, generator=gen, dtype=torch.float64),
               torch.randn(32, 16, 3, 3, generator=gen, dtype=torch.float64) * 0.1,
               torch.randn(32, 16, 3, 3, generator=gen, dtype=torch.float64),
               torch.randn(32, generator=gen, dtype=torch.float64)]
    _grads_vs_oracle(lambda x, w, s, b: sf.masked_conv2d(x, w, s, 2.0, b, padding=1),
                     lambda x, w, s, b: composite_conv(x, w, s, 2.0, b, padding=1), tensors, dtype)


def test_cuda_extension_elementwise_matches_reference():
    ext = pytest.importorskip("subind_fast._C_cuda")
    w = torch.randn(1000, 37, device="cuda")
    s = torch.randn(1000, 37, device="cuda") * 2
    want = w.double() * torch.sigmoid(4.0 * s.double())
    assert (ext.mask_weight(w, s, torch.tensor(4.0, device="cuda"), 0).double() - want).abs().max() < 1e-6


def test_opcheck_and_compile_on_cuda():
    x = torch.randn(8, 32, device="cuda", requires_grad=True)
    w = torch.randn(16, 32, device="cuda")
    s = torch.randn(16, 32, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.subind.masked_linear, (x, w, s, None, 2.0, "soft"))
    layer = sf.nn.MaskedLinear(32, 16, beta=2.0).cuda()
    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))


@pytest.mark.parametrize("mode", ["concrete", "gumbel"])
def test_sampled_modes_on_cuda_match_the_float64_oracle(mode):
    from oracle import composite_sampled_weight

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 96, generator=gen), torch.randn(80, 96, generator=gen) / 10
    s, b = torch.randn(80, 96, generator=gen), torch.randn(80, generator=gen)
    key = torch.tensor([2 ** 40 + 3, 1])
    ours, ours_g = run_with_grads(
        lambda *t: sf.masked_linear(t[0], t[1], t[2], 1.5, t[3], mode, key.cuda()),
        [leaf(t.cuda()) for t in (x, w, s, b)])
    want, want_g = run_with_grads(
        lambda *t: torch.nn.functional.linear(
            t[0], composite_sampled_weight(t[1], t[2], 1.5, mode, key), t[3]),
        [leaf(t, torch.float64) for t in (x, w, s, b)])
    cpu_weff = sf.mask_weight(w, s, 1.5, mode, key)
    cuda_weff = sf.mask_weight(w.cuda(), s.cuda(), 1.5, mode, key.cuda()).cpu()
    assert ((cpu_weff != 0) != (cuda_weff != 0)).sum() <= 2  # the same noise on both devices
    if mode == "concrete":
        assert_matches_oracle(ours.cpu(), want, None, torch.float32, "y")
        for name, g, o in zip(("dx", "dw", "ds", "db"), ours_g, want_g):
            assert_matches_oracle(g.cpu(), o, None, torch.float32, name)
