"""What the Triton kernels cost a GPU, measured without one: every kernel ×
autotune config × dtype × variant compiled ahead of time for sm_80 and sm_90a
(Triton's own compiler, the specialisations its runtime applies), then
assembled by the ``ptxas`` Triton ships, which reports registers, spill
bytes and shared memory.

    python -m benchmarks.gpu_static            # the table (markdown)
    python -m benchmarks.gpu_static --csv F    # also as CSV

Specialisations, as Triton's launcher applies them to real arguments:
pointers 16-byte aligned (torch's allocations are), integer arguments equal to
1 become constants, the other sizes and strides divisible by 16 (the layer
shapes our users run: 768, 3072, …).  The variants are the launches
``backends/triton_backend.py`` makes: the forward GEMM (mask pre-pass then a
plain GEMM with bias), the forward with the mask in the B-tile prologue, the
backward GEMM whose epilogue writes ∂s, ∂θ and W_eff, and the ∂x GEMM.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ARCHS = {"sm_80": 80, "sm_90a": 90}
#: shared memory a block may use (opt-in maximum), per architecture
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90a": 227 * 1024}
DTYPES = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the backend makes it: its argument types, the
    integer values that decide specialisation, and the constexprs."""
    kernel: str
    variant: str
    pointers: dict      # name → element type
    integers: dict      # name → a representative value (1 → constant, k·16 → aligned)
    constexprs: dict


def gemm_launches(dtype: str) -> list[Launch]:
    """The four masked_matmul_kernel launches of a masked linear layer with
    N outputs and K inputs over M rows (x is M×K, θ and s are N×K)."""
    M, N, K = 4096, 3072, 768
    common = dict(MODE=0, WANT_S=False, WANT_THETA=False, WANT_WEFF=False,
                  IEEE=dtype == "fp32")
    ptr = {name: dtype for name in ("a_ptr", "b_ptr", "c_ptr", "bias_ptr", "theta_ptr",
                                    "s_ptr", "gs_ptr", "gtheta_ptr", "weff_ptr")}
    ptr["beta_ptr"] = "fp32"
    zero_t = dict(stride_tm=0, stride_tn=0)
    forward = dict(M=M, N=N, K=K, stride_am=K, stride_ak=1, stride_bk=1, stride_bn=K,
                   stride_cm=N, stride_cn=1, **zero_t)
    out = [Launch("masked_matmul_kernel", "forward", dict(ptr, bias_ptr=dtype), forward,
                  dict(common, HAS_BIAS=True, MASK_B_PROLOGUE=False, MASK_GRAD_EPILOGUE=False)),
           Launch("masked_matmul_kernel", "forward, mask prologue",
                  dict(ptr, s_ptr="fp32"), forward,
                  dict(common, HAS_BIAS=True, MASK_B_PROLOGUE=True, MASK_GRAD_EPILOGUE=False)),
           # ∂W_eff (N×K) = Gᵀ·x: A = Gᵀ, B = x; the epilogue reads θ, s and writes ∂s, ∂θ, W_eff
           Launch("masked_matmul_kernel", "backward, gradient epilogue",
                  dict(ptr, s_ptr="fp32", gs_ptr="fp32"),
                  dict(M=N, N=K, K=M, stride_am=1, stride_ak=N, stride_bk=K, stride_bn=1,
                       stride_cm=0, stride_cn=0, stride_tm=K, stride_tn=1),
                  dict(common, HAS_BIAS=False, MASK_B_PROLOGUE=False, MASK_GRAD_EPILOGUE=True,
                       WANT_S=True, WANT_THETA=True, WANT_WEFF=True)),
           Launch("masked_matmul_kernel", "backward ∂x", ptr,
                  dict(M=M, N=K, K=N, stride_am=N, stride_ak=1, stride_bk=K, stride_bn=1,
                       stride_cm=K, stride_cn=1, **zero_t),
                  dict(common, HAS_BIAS=False, MASK_B_PROLOGUE=False,
                       MASK_GRAD_EPILOGUE=False))]
    return out


def elementwise_launches(dtype: str) -> list[Launch]:
    from subind_fast.backends import triton_kernels as K

    block = K.ELEMENTWISE_BLOCK
    n = {"n": 768 * 3072}
    return [
        Launch("mask_weight_kernel", "soft mask", dict(theta_ptr=dtype, s_ptr="fp32",
                                                       out_ptr=dtype, beta_ptr="fp32"), n,
               dict(MODE=0, BLOCK=block)),
        Launch("mask_backward_kernel", "soft mask, all gradients",
               dict(g_ptr=dtype, theta_ptr=dtype, s_ptr="fp32", gs_ptr="fp32", gtheta_ptr=dtype,
                    weff_ptr=dtype, beta_ptr="fp32"), n,
               dict(MODE=0, WANT_S=True, WANT_THETA=True, WANT_WEFF=True, BLOCK=block)),
        Launch("sigmoid_sum_kernel", "", dict(s_ptr="fp32", out_ptr="fp32", beta_ptr="fp32"), n,
               dict(BLOCK=block)),
        Launch("sigmoid_slope_kernel", "", dict(s_ptr="fp32", grad_ptr="fp32", out_ptr="fp32",
                                                beta_ptr="fp32"), n, dict(BLOCK=block)),
    ]


def _configs(kernel) -> list:
    """The autotuner's configs, or one default launch for a plain kernel."""
    import triton

    configs = getattr(kernel, "configs", None)
    return configs if configs else [triton.Config({}, num_warps=4, num_stages=3)]


def compile_launch(launch: Launch, config, arch: str) -> dict:
    """Compile one launch for ``arch`` and read ptxas' report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from subind_fast.backends import triton_kernels as K

    kernel = getattr(K, launch.kernel)
    fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
    constexprs = {**launch.constexprs, **config.kwargs}
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in launch.pointers:
            signature[name] = "*" + launch.pointers[name]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name in launch.integers:
            value = launch.integers[name]
            if value == 1:
                signature[name] = "constexpr"
                constexprs[name] = 1
            else:
                signature[name] = "i32"
                if value % 16 == 0:
                    attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"  # the optimizers' scalars
    target = GPUTarget("cuda", ARCHS[arch], 32)
    backend = triton.compiler.make_backend(target)
    options = backend.parse_options({"num_warps": config.num_warps,
                                     "num_stages": config.num_stages})
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs,
                                        attrs=attrs), target=target, options=options.__dict__)
    ptx = compiled.asm["ptx"]
    report = ptxas_report(ptx, arch)
    return {"registers": report["registers"], "spill_bytes": report["spill_bytes"],
            "shared_bytes": compiled.metadata.shared, "wgmma": "wgmma" in ptx}


def ptxas() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def ptxas_report(ptx: str, arch: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "kernel.ptx"
        source.write_text(ptx)
        done = subprocess.run([str(ptxas()), f"-arch={arch}", "-v", str(source), "-o",
                               str(Path(tmp) / "kernel.cubin")],
                              capture_output=True, text=True, check=True)
    text = done.stdout + done.stderr
    registers = int(re.search(r"Used (\d+) registers", text).group(1))
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {"registers": registers,
            "spill_bytes": int(spills.group(1)) + int(spills.group(2)) if spills else 0}


def measure(kernels: str = "all") -> list[dict]:
    """One row per (launch, config, dtype, arch)."""
    from subind_fast.backends import triton_kernels as K

    rows = []
    for dtype in DTYPES:
        launches = ([] if kernels == "elementwise" else gemm_launches(dtype)) + (
            [] if kernels == "gemm" else elementwise_launches(dtype))
        for launch in launches:
            for config in _configs(getattr(K, launch.kernel)):
                for arch in ARCHS:
                    shape = "×".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N",
                                                                     "BLOCK_K")
                                     if k in config.kwargs)
                    rows.append({"kernel": launch.kernel, "variant": launch.variant,
                                 "dtype": dtype, "arch": arch,
                                 "config": f"{shape or 'block'} w{config.num_warps} "
                                           f"s{config.num_stages}",
                                 **compile_launch(launch, config, arch)})
    return rows


def problems(rows: list[dict]) -> list[str]:
    """What the kernels must not do on any config autotune may pick: spill,
    exceed the block's shared memory, or (sm_90 GEMMs) miss wgmma."""
    out = []
    for r in rows:
        where = f"{r['kernel']} {r['variant']} {r['dtype']} {r['config']} {r['arch']}"
        if r["spill_bytes"]:
            out.append(f"{where}: spills {r['spill_bytes']} B")
        if r["shared_bytes"] > SHARED_LIMIT[r["arch"]]:
            out.append(f"{where}: {r['shared_bytes']} B shared > {SHARED_LIMIT[r['arch']]}")
        if (r["kernel"] == "masked_matmul_kernel" and r["arch"] == "sm_90a"
                and r["dtype"] != "fp32" and not r["wgmma"]):
            out.append(f"{where}: no wgmma")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--kernels", choices=("all", "gemm", "elementwise"), default="all")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the interpreter's one small config is not what runs
    rows = measure(args.kernels)
    print("| kernel | variant | dtype | config | arch | registers | spill bytes | shared bytes "
          "| wgmma |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kernel']} | {r['variant']} | {r['dtype']} | {r['config']} | {r['arch']} | "
              f"{r['registers']} | {r['spill_bytes']} | {r['shared_bytes']} | "
              f"{'yes' if r['wgmma'] else 'no'} |")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    found = problems(rows)
    for line in found:
        print("PROBLEM:", line, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
