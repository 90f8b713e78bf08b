"""Half and bfloat16 weights in the CPU loops.  The loops compiled per vector
ISA include no c10 code (csrc/cpu/loops/cpu_loops.h says why), so they convert
16-bit weights themselves; these tests hold those conversions to torch's, bit
for bit, under whichever CPU capability runs (test_cpu_capability.py runs
this file under each one the machine has)."""
import pytest
import torch

SIXTEEN_BIT = [torch.float16, torch.bfloat16]


def _mask_weight(weight, logits, beta, mode):
    return torch.ops.subind.mask_weight(weight, logits, torch.tensor(beta), mode, None)


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
def test_every_bit_pattern_survives_the_round_trip(dtype):
    # mode "none": w_eff = θ·1, i.e. 16-bit → fp32 → 16-bit for every pattern,
    # subnormals, infinities and signed zeros included.
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    weight = bits.view(dtype)
    out = _mask_weight(weight, torch.zeros(weight.shape), 1.0, "none")
    nan = torch.isnan(weight)
    assert torch.equal(out.view(torch.int16)[~nan], bits[~nan])
    assert torch.isnan(out[nan]).all()


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
def test_products_round_to_nearest_even_as_torch_rounds_them(dtype):
    # θ = ±1 and float64 logits: w_eff = θ·σ(s) is formed in float64, and the
    # loop's one rounding is float64 → fp32 → 16 bits; σ spans 1.5e-8 to 1,
    # through the half subnormals (< 6.1e-5) and every binade above them.
    gen = torch.Generator().manual_seed(0)
    logits = torch.empty(200_000, dtype=torch.float64).uniform_(-18.0, 8.0, generator=gen)
    sign = torch.randint(0, 2, logits.shape, generator=gen) * 2 - 1
    weight = sign.to(dtype)
    out = _mask_weight(weight, logits, 1.0, "soft")
    want = (sign.double() * torch.sigmoid(logits)).float().to(dtype)
    assert torch.equal(out.view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("dtype", SIXTEEN_BIT)
def test_halving_rounds_ties_to_even(dtype):
    # s = 0 gives m = 1/2 exactly: halving a subnormal with an odd mantissa
    # lands exactly between two 16-bit values, and must round to the even one.
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    weight = bits.view(dtype)
    finite = torch.isfinite(weight)
    out = _mask_weight(weight[finite], torch.zeros(int(finite.sum())), 1.0, "soft")
    want = (weight[finite].float() * 0.5).to(dtype)
    assert torch.equal(out.view(torch.int16), want.view(torch.int16))
