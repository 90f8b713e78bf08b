"""What the GPU kernels cost a GPU, measured without one: every Triton kernel
× autotune config × operand type × variant compiled ahead of time for sm_80
and sm_90a (Triton's own compiler, the specialisations its runtime applies),
then assembled by the ``ptxas`` Triton ships, which reports registers, spill
bytes and shared memory; and the CUDA extension's kernels compiled by nvcc
with ``-Xptxas -v`` for the same architectures (where setup.py finds its CUDA
toolkit).  Exit status 1 names each config that spills, exceeds shared
memory, or (sm_90a tensor-core GEMMs) misses wgmma.

    python -m benchmarks.gpu_static            # the table (markdown)
    python -m benchmarks.gpu_static --summary  # one line per kernel, variant, dtype
    python -m benchmarks.gpu_static --csv F    # also as CSV

Specialisations, as Triton's launcher applies them to real arguments:
pointers 16-byte aligned (torch's allocations are), integer arguments equal to
1 become constants, the other sizes and strides divisible by 16 (the layer
shapes our users run: 768, 3072, …).  The variants are the launches
``ops/cuda/triton_launch.py`` makes: the forward GEMM (mask pre-pass then a
plain GEMM with bias), the forward with the mask in the B-tile prologue, the
backward GEMM whose epilogue writes ∂s, ∂θ and W_eff, and the ∂x GEMM; each
with the configs ``triton_kernels.gemm_configs`` lets autotune pick for it.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import multiprocessing
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
#: operand types: "tf32" is fp32 tensors with TF32 dots (what the backend
#: launches when torch.get_float32_matmul_precision() allows it)
DTYPES = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the backend makes it: its argument types, the
    integer values that decide specialisation, and the constexprs."""
    kernel: str
    variant: str
    pointers: dict      # name → element type
    integers: dict      # name → a representative value (1 → constant, k·16 → aligned)
    constexprs: dict
    configs: list       # the autotune configs the launch may pick


def _operands(dtype: str) -> tuple[str, str]:
    """(pointer element type, triton_kernels.GEMM_OPERANDS class) of a DTYPES entry."""
    if dtype == "tf32":
        return "fp32", "fp32 tf32"
    return dtype, "fp32 ieee" if dtype == "fp32" else "16-bit"


def gemm_launches(dtype: str) -> list[Launch]:
    """The four masked_matmul_kernel launches of a masked linear layer with
    N outputs and K inputs over M rows (x is M×K, θ and s are N×K)."""
    from subind_fast.ops.cuda.triton_kernels import gemm_configs

    M, N, K = 4096, 3072, 768
    element, operands = _operands(dtype)
    common = dict(MODE=0, WANT_S=False, WANT_THETA=False, WANT_WEFF=False, HAS_GRAD_L0=False,
                  IEEE=operands == "fp32 ieee")
    ptr = {name: element for name in ("a_ptr", "b_ptr", "c_ptr", "bias_ptr", "theta_ptr",
                                      "s_ptr", "gs_ptr", "gtheta_ptr", "weff_ptr")}
    ptr["beta_ptr"] = ptr["grad_l0_ptr"] = "fp32"
    zero_t = dict(stride_tm=0, stride_tn=0)
    forward = dict(M=M, N=N, K=K, stride_am=K, stride_ak=1, stride_bk=1, stride_bn=K,
                   stride_cm=N, stride_cn=1, **zero_t)
    plain = gemm_configs(operands, "plain")
    return [Launch("masked_matmul_kernel", "forward", ptr, forward,
                   dict(common, HAS_BIAS=True, MASK_B_PROLOGUE=False, MASK_GRAD_EPILOGUE=False),
                   plain),
            Launch("masked_matmul_kernel", "forward, mask prologue",
                   dict(ptr, s_ptr="fp32"), forward,
                   dict(common, HAS_BIAS=True, MASK_B_PROLOGUE=True, MASK_GRAD_EPILOGUE=False),
                   gemm_configs(operands, "mask prologue")),
            # ∂W_eff (N×K) = Gᵀ·x: A = Gᵀ, B = x; the epilogue reads θ, s and writes ∂s, ∂θ,
            # W_eff, with the L0 penalty's gradient (a discovery step's backward)
            Launch("masked_matmul_kernel", "backward, gradient epilogue",
                   dict(ptr, s_ptr="fp32", gs_ptr="fp32"),
                   dict(M=N, N=K, K=M, stride_am=1, stride_ak=N, stride_bk=K, stride_bn=1,
                        stride_cm=0, stride_cn=0, stride_tm=K, stride_tn=1),
                   dict(common, HAS_BIAS=False, MASK_B_PROLOGUE=False, MASK_GRAD_EPILOGUE=True,
                        WANT_S=True, WANT_THETA=True, WANT_WEFF=True, HAS_GRAD_L0=True),
                   gemm_configs(operands, "gradient epilogue")),
            Launch("masked_matmul_kernel", "backward ∂x", ptr,
                   dict(M=M, N=K, K=N, stride_am=N, stride_ak=1, stride_bk=K, stride_bn=1,
                        stride_cm=K, stride_cn=1, **zero_t),
                   dict(common, HAS_BIAS=False, MASK_B_PROLOGUE=False,
                        MASK_GRAD_EPILOGUE=False), plain)]


def elementwise_launches(dtype: str) -> list[Launch]:
    """The element-wise kernels (mask pre-pass and backward, the L0 penalty,
    the frozen-mask optimizer steps), launched with Triton's defaults."""
    import triton

    from subind_fast.ops.cuda import triton_kernels as K

    if dtype == "tf32":  # no dots: the same kernels as fp32
        return []
    block = K.ELEMENTWISE_BLOCK
    n = {"n": 768 * 3072}
    default = [triton.Config({}, num_warps=4, num_stages=3)]
    state = dict(p_ptr=dtype, g_ptr=dtype, bits_ptr="u8")
    return [
        Launch("mask_weight_kernel", "soft mask and L0 penalty",
               dict(theta_ptr=dtype, s_ptr="fp32", out_ptr=dtype, l0_ptr="fp32",
                    beta_ptr="fp32"), n, dict(MODE=0, L0=True, BLOCK=block), default),
        Launch("mask_backward_kernel", "soft mask, all gradients",
               dict(g_ptr=dtype, theta_ptr=dtype, s_ptr="fp32", gs_ptr="fp32", gtheta_ptr=dtype,
                    weff_ptr=dtype, beta_ptr="fp32"), n,
               dict(MODE=0, WANT_S=True, WANT_THETA=True, WANT_WEFF=True, BLOCK=block), default),
        Launch("adamw_kernel", "amsgrad, frozen bits",
               dict(state, m_ptr=dtype, v_ptr=dtype, vmax_ptr=dtype), n,
               dict(AMSGRAD=True, HAS_BITS=True, BLOCK=block), default),
        Launch("sgd_kernel", "momentum, nesterov, frozen bits", dict(state, buf_ptr=dtype), n,
               dict(HAS_BUF=True, NESTEROV=True, FIRST_STEP=False, HAS_BITS=True, BLOCK=block),
               default),
    ] + ([  # the penalty reads fp32 logits only
        Launch("sigmoid_sum_kernel", "", dict(s_ptr="fp32", out_ptr="fp32", beta_ptr="fp32"), n,
               dict(BLOCK=block), default),
        Launch("sigmoid_slope_kernel", "", dict(s_ptr="fp32", grad_ptr="fp32", out_ptr="fp32",
                                                beta_ptr="fp32"), n, dict(BLOCK=block), default),
    ] if dtype == "fp32" else [])


def compile_launch(launch: Launch, config, arch: str) -> dict:
    """Compile one launch for ``arch`` and read ptxas' report."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from subind_fast.ops.cuda import triton_kernels as K

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


#: the CUDA extension's kernels, compiled by nvcc as setup.py compiles them
CUDA_SOURCES = ("csrc/cuda/mask_ops_cuda.cu",)
ROOT = Path(__file__).resolve().parent.parent


def _cuda_toolkit() -> Path | None:
    """The CUDA toolkit setup.py builds the extension with (its own lookup)."""
    import importlib.util

    import torch

    if not torch.version.cuda:
        return None
    spec = importlib.util.spec_from_file_location("subind_setup", ROOT / "setup.py")
    setup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup)
    home = setup._cuda_home_matching(torch.version.cuda)
    return home if home is not None and not setup._missing_toolkit_pieces(
        home, torch.version.cuda) else None


def _nvcc_command(home: Path, source: str, output: Path) -> list[str]:
    import sysconfig

    import torch
    import torch.utils.cpp_extension as cpp

    includes = [*cpp.include_paths("cuda"), sysconfig.get_paths()["include"],
                str(ROOT / "csrc" / "include"), str(home / "include")]
    return [str(home / "bin" / "nvcc"), "-c", str(ROOT / source), "-o", str(output), "-O3",
            "-std=c++20", *cpp.COMMON_NVCC_FLAGS,
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            "-DTORCH_EXTENSION_NAME=_C_cuda", "--compiler-options", "-fPIC",
            *(f"-I{path}" for path in includes),
            *(f"-gencode=arch=compute_{arch[3:]},code={arch}" for arch in ARCHS),
            "-Xptxas", "-v"]


def _demangle(names: list[str]) -> list[str]:
    done = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    out = done.stdout.splitlines() if done.returncode == 0 else []
    return out if len(out) == len(names) else names


def cuda_extension_rows(home: Path) -> list[dict]:
    """One row per CUDA kernel instantiation × architecture, from ptxas -v."""
    rows = []
    for source in CUDA_SOURCES:
        with tempfile.TemporaryDirectory() as tmp:
            done = subprocess.run(_nvcc_command(home, source, Path(tmp) / "kernels.o"),
                                  capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"nvcc failed on {source}:\n{done.stderr[-4000:]}")
        entries = re.split(r"ptxas info\s*: Compiling entry function ", done.stderr)[1:]
        found = [re.match(r"'([^']+)' for '(sm_\w+)'", entry) for entry in entries]
        names = _demangle([match.group(1) for match in found])
        for entry, match, name in zip(entries, found, names):
            signature = name.replace("(anonymous namespace)::", "").split("(")[0]
            signature = signature.removeprefix("void ")
            spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", entry)
            shared = re.search(r"(\d+) bytes smem", entry)
            rows.append({"kernel": signature.split("<")[0], "variant": Path(source).name,
                         "dtype": _template_types(signature),
                         "arch": match.group(2), "config": "nvcc -O3",
                         "registers": int(re.search(r"Used (\d+) registers", entry).group(1)),
                         "spill_bytes": int(spills.group(1)) + int(spills.group(2)),
                         "shared_bytes": int(shared.group(1)) if shared else 0, "wgmma": False})
    return rows


def _template_types(name: str) -> str:
    """The element types a kernel instantiation was compiled for (c10::Half → fp16, …)."""
    found = re.search(r"<([^<>]*)>", name)
    if not found:
        return ""
    names = {"float": "fp32", "double": "fp64", "c10::Half": "fp16", "c10::BFloat16": "bf16"}
    return "/".join(names.get(t.strip(), t.strip()) for t in found.group(1).split(","))


def _launches(dtype: str, kernels: str) -> list[Launch]:
    return ([] if kernels == "elementwise" else gemm_launches(dtype)) + (
        [] if kernels == "gemm" else elementwise_launches(dtype))


def _measure_one(task: tuple) -> dict:
    """One row; ``task`` names the launch by indices so a worker process
    rebuilds it (kernels and configs are not picklable)."""
    dtype, kernels, launch_index, config_index, arch = task
    launch = _launches(dtype, kernels)[launch_index]
    config = launch.configs[config_index]
    shape = "×".join(str(config.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")
                     if k in config.kwargs)
    return {"kernel": launch.kernel, "variant": launch.variant, "dtype": dtype, "arch": arch,
            "config": f"{shape or 'block'} w{config.num_warps} s{config.num_stages}",
            **compile_launch(launch, config, arch)}


def measure(kernels: str = "all", jobs: int = 1) -> list[dict]:
    """One row per Triton (launch, config, dtype, arch), compiled by ``jobs`` processes."""
    tasks = [(dtype, kernels, li, ci, arch)
             for dtype in DTYPES
             for li, launch in enumerate(_launches(dtype, kernels))
             for ci in range(len(launch.configs))
             for arch in ARCHS]
    if jobs <= 1:
        return [_measure_one(task) for task in tasks]
    context = multiprocessing.get_context("spawn")  # a clean Triton per worker
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        return list(pool.map(_measure_one, tasks))


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
                and r["dtype"] in ("bf16", "fp16", "tf32") and not r["wgmma"]):
            out.append(f"{where}: no wgmma")
    return out


def summary(rows: list[dict]) -> list[str]:
    """The table condensed to one line per kernel, variant and operand type:
    over its configs, per architecture, registers (min–max), the most spill
    bytes, the most shared memory, and how many use wgmma."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["variant"], r["dtype"]), {}).setdefault(
            r["arch"], []).append(r)
    lines = ["| kernel | variant | dtype | configs | " + " | ".join(
        f"{arch} registers · spill B · shared KiB · wgmma" for arch in ARCHS) + " |",
        "|---|---|---|---|" + "---|" * len(ARCHS)]
    for (kernel, variant, dtype), by_arch in groups.items():
        cells = []
        for arch in ARCHS:
            got = by_arch.get(arch, [])
            if not got:
                cells.append("—")
                continue
            regs = sorted(r["registers"] for r in got)
            cells.append(f"{regs[0]}–{regs[-1]} · {max(r['spill_bytes'] for r in got)} · "
                         f"{max(r['shared_bytes'] for r in got) / 1024:.0f} · "
                         f"{sum(bool(r['wgmma']) for r in got)}/{len(got)}")
        count = len(next(iter(by_arch.values())))
        lines.append(f"| {kernel} | {variant or '—'} | {dtype or '—'} | {count} | "
                     + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--kernels", choices=("all", "gemm", "elementwise", "cuda"),
                        default="all", help="all: the Triton kernels, and the CUDA extension's "
                        "where setup.py finds its CUDA toolkit")
    parser.add_argument("--summary", action="store_true",
                        help="one line per kernel, variant and dtype instead of one per config")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compiler processes (default: one per core)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("TRITON_INTERPRET=1 replaces the compiler with the interpreter; unset it")
    rows = measure(args.kernels, args.jobs) if args.kernels != "cuda" else []
    if args.kernels in ("all", "cuda"):
        home = _cuda_toolkit()
        if home is not None:
            rows += cuda_extension_rows(home)
        elif args.kernels == "cuda":
            parser.error("no CUDA toolkit matching torch's (make cuda-toolkit installs one)")
        else:
            print("CUDA extension: not compiled, no CUDA toolkit matching torch's",
                  file=sys.stderr)
    if args.summary:
        print("\n".join(summary(rows)))
    else:
        print("| kernel | variant | dtype | config | arch | registers | spill bytes "
              "| shared bytes | wgmma |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['kernel']} | {r['variant']} | {r['dtype']} | {r['config']} | "
                  f"{r['arch']} | {r['registers']} | {r['spill_bytes']} | {r['shared_bytes']} | "
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
