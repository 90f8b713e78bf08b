"""The GPU kernels compile clean for sm_80 and sm_90a, checked without a GPU:
benchmarks/gpu_static.py compiles every Triton kernel × autotune config ×
operand type × variant ahead of time (the runtime's specialisations) and the
CUDA extension with ``-Xptxas -v``; every config autotune may pick must use no
spill bytes, stay within the block's shared memory, and (sm_90a GEMMs with
tensor-core dots) use wgmma.

It runs the script in a subprocess: the test session imports the kernels
under TRITON_INTERPRET=1, which replaces the compiler with the interpreter."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    table = tmp_path_factory.mktemp("gpu_static") / "rows.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_static", "--csv", str(table)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    rows = list(csv.DictReader(table.open())) if table.exists() else []
    return done, rows


def test_every_config_compiles_without_spills_within_shared_memory(compiled):
    from benchmarks import gpu_static

    done, rows = compiled
    assert done.returncode == 0, done.stderr[-4000:]
    for row in rows:
        row.update({k: int(row[k]) for k in ("registers", "spill_bytes", "shared_bytes")})
        row["wgmma"] = row["wgmma"] == "True"
    assert gpu_static.problems(rows) == []


def test_the_table_covers_every_launch_config_dtype_and_arch(compiled):
    """What autotune may pick is what was compiled: the configs come from the
    kernels' own lists (triton_kernels.gemm_configs), per operand type and variant."""
    from benchmarks import gpu_static
    from subind_fast.ops.cuda import triton_kernels as K

    _, rows = compiled
    cuda_sources = {Path(source).name for source in gpu_static.CUDA_SOURCES}
    triton_rows = [r for r in rows if r["variant"] not in cuda_sources]
    expected = sum(len(launch.configs) * len(gpu_static.ARCHS)
                   for dtype in gpu_static.DTYPES
                   for launch in gpu_static._launches(dtype, "all"))
    keys = {(r["kernel"], r["variant"], r["dtype"], r["config"], r["arch"]) for r in triton_rows}
    assert len(triton_rows) == len(keys) == expected
    for operands in K.GEMM_OPERANDS:
        for variant in K.GEMM_VARIANTS:
            assert K.gemm_configs(operands, variant), (operands, variant)
    gemm = {(r["variant"], r["dtype"], r["arch"]) for r in triton_rows
            if r["kernel"] == "masked_matmul_kernel"}
    assert len(gemm) == 4 * len(gpu_static.DTYPES) * len(gpu_static.ARCHS)


def test_the_cuda_extension_is_checked_where_it_was_built(compiled):
    """Where the build compiled the CUDA extension (CI requires it), its
    kernels were compiled for both architectures and reported."""
    from benchmarks import gpu_static

    built = list((ROOT / "subind_fast").glob("_C_cuda*.so"))
    if not built:
        pytest.skip("the CUDA extension was not built here (no matching CUDA toolkit)")
    if gpu_static._cuda_toolkit() is None and os.environ.get("SUBIND_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("built, but this environment has no CUDA toolkit to compile it for the "
                    "check (a core install; CI requires one)")
    _, rows = compiled
    cuda = [r for r in rows if r["variant"] == "mask_ops_cuda.cu"]
    assert {r["arch"] for r in cuda} == {"sm_80", "sm_90a"}
    assert all(int(r["spill_bytes"]) == 0 for r in cuda)


def test_the_gradient_epilogue_list_keeps_the_accumulator_small():
    from subind_fast.ops.cuda import triton_kernels as K

    for operands in K.GEMM_OPERANDS:
        for config in K.gemm_configs(operands, "gradient epilogue"):
            kw = config.kwargs
            assert kw["BLOCK_M"] * kw["BLOCK_N"] // (32 * config.num_warps) <= 64


def test_unknown_operands_or_variant_are_named():
    from subind_fast.ops.cuda import triton_kernels as K

    with pytest.raises(ValueError, match="operands must be one of"):
        K.gemm_configs("fp8", "plain")
    with pytest.raises(ValueError, match="variant must be one of"):
        K.gemm_configs("16-bit", "epilogue")


@pytest.mark.parametrize("dtype,ieee,operands", [("bfloat16", False, "16-bit"),
                                                 ("float16", False, "16-bit"),
                                                 ("float32", True, "fp32 ieee"),
                                                 ("float32", False, "fp32 tf32")])
@pytest.mark.parametrize("flags,variant", [((False, False), "plain"),
                                           ((True, False), "mask prologue"),
                                           ((False, True), "gradient epilogue")])
def test_autotune_prunes_to_the_checked_list(monkeypatch, dtype, ieee, operands, flags, variant):
    """At launch the autotuner keeps exactly the configs the static check compiled."""
    import torch

    from subind_fast.ops.cuda import triton_kernels as K

    monkeypatch.setattr(K, "INTERPRETING", False)
    union = [K._config(K._shape_key(c)) for operands_ in K.GEMM_OPERANDS
             for variant_ in K.GEMM_VARIANTS for c in K.gemm_configs(operands_, variant_)]
    a = torch.empty(1, dtype=getattr(torch, dtype))
    kept = K._prune_gemm_configs(union, {"a_ptr": a}, IEEE=ieee, MASK_B_PROLOGUE=flags[0],
                                 MASK_GRAD_EPILOGUE=flags[1])
    assert {K._shape_key(c) for c in kept} == {
        K._shape_key(c) for c in K.gemm_configs(operands, variant)}
