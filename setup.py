"""Build of the compiled parts of subind_fast.

* ``subind_fast._C`` always builds: the ``torch.ops.subind`` schemas and their
  Meta, Autograd, Autocast and CPU (C++/OpenMP) kernels.
* ``subind_fast._C_cuda`` (the ops' CUDA kernels) is optional.  It builds
  when a complete CUDA toolkit whose version matches ``torch.version.cuda`` is
  found: ``CUDA_HOME``, else pip's packages under ``site-packages/nvidia/cu<major>``
  (``nvidia-cuda-nvcc``, ``-crt``, ``nvidia-nvvm`` and ``nvidia-cuda-cccl``, whose
  ``nv/target`` header cuda_fp16.h includes; ``make build`` installs them).  A
  missing toolkit piece or a failed compile prints one warning and the CPU
  extension still installs.  ``SUBIND_SKIP_CUDA_BUILD=1`` skips it;
  ``SUBIND_REQUIRE_CUDA_BUILD=1`` (set by CI) turns either into a build error.

Neither is needed for ``import subind_fast``: a missing extension raises only
when a kernel from it is called.  Build with ``pip install --no-build-isolation``
so the extension compiles against the installed torch.
"""
from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sysconfig
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
INCLUDE = str(ROOT / "csrc" / "include")


# The CPU loops are compiled once per x86-64 vector ISA, each unit with its
# ISA's flags (csrc/cpu/loops/cpu_loops.h), and chosen at load from the running
# CPU; everything else compiles for the baseline ISA, so a library built on
# one machine runs on any x86-64 CPU.  AVX-512 runs the mask passes about
# 1.8x faster than AVX2 (16 lanes against 8).
_X86_64 = platform.machine().lower() in ("x86_64", "amd64")
_AVX2 = ["-mavx2", "-mfma", "-mf16c"]
CPU_LOOP_UNITS = {
    "default": ["-march=x86-64", "-mtune=generic"] if _X86_64 else [],
    **({"avx2": ["-march=x86-64", *_AVX2],
        "avx512": ["-march=x86-64", *_AVX2, "-mavx512f", "-mavx512dq", "-mavx512bw",
                   "-mavx512vl", "-mprefer-vector-width=512"]} if _X86_64 else {}),
}
LOOPS_DIR = ROOT / "csrc" / "cpu" / "loops"
_CPU_LOOP_MACROS = [("SUBIND_HAVE_X86_LOOPS", None)] if _X86_64 else []
_CPU_LOOP_FLAGS = ["-O3", "-fPIC", "-std=c++20", "-fopenmp-simd", "-fno-trapping-math",
                   "-fno-math-errno", "-fvisibility=hidden",
                   *[f"-D{name}" for name, _ in _CPU_LOOP_MACROS]]


def _cpu_loop_headers() -> list[Path]:
    return sorted(LOOPS_DIR.glob("*.h")) + sorted((ROOT / "csrc" / "include" / "subind").glob("*.h"))


def compile_cpu_loops(build_temp: str) -> list[str]:
    """One object per CPU capability, compiled in parallel with the C++
    compiler the extension uses ($CXX, else c++); redone when its unit or a
    header it may include is newer than the object."""
    cxx = shlex.split(os.environ.get("CXX", "c++"))
    out_dir = Path(build_temp) / "cpu_loops"
    out_dir.mkdir(parents=True, exist_ok=True)
    newest_header = max(h.stat().st_mtime for h in _cpu_loop_headers())
    jobs, objects = [], []
    for capability, isa_flags in CPU_LOOP_UNITS.items():
        source = LOOPS_DIR / f"loops_{capability}.cpp"
        obj = out_dir / f"loops_{capability}.o"
        objects.append(str(obj))
        if obj.exists() and obj.stat().st_mtime > max(newest_header, source.stat().st_mtime):
            continue
        cmd = [*cxx, *_CPU_LOOP_FLAGS, *isa_flags, f"-I{INCLUDE}", "-c", str(source), "-o", str(obj)]
        print("[subind-fast]", " ".join(cmd))
        jobs.append((cmd, subprocess.Popen(cmd)))
    for cmd, job in jobs:
        if job.wait() != 0:
            raise RuntimeError(f"compiling the CPU loops failed: {' '.join(cmd)}")
    return objects


def _cuda_home_matching(torch_cuda: str) -> Path | None:
    candidates = []
    if os.environ.get("CUDA_HOME"):
        candidates.append(Path(os.environ["CUDA_HOME"]))
    major = torch_cuda.split(".")[0]
    candidates.append(Path(sysconfig.get_paths()["purelib"]) / "nvidia" / f"cu{major}")
    for home in candidates:
        nvcc = home / "bin" / "nvcc"
        if not nvcc.exists():
            continue
        out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout
        found = re.search(r"release (\d+\.\d+)", out)
        if found and found.group(1) == ".".join(torch_cuda.split(".")[:2]):
            return home
        print(f"[subind-fast] {nvcc} is CUDA {found.group(1) if found else '?'}, "
              f"torch needs {torch_cuda}: not used")
    return None


# Files a CUDA compile of this extension needs, relative to the toolkit root,
# with the pip package that ships each (for the error message).
_TOOLKIT_PIECES = {
    "bin/nvcc": "nvidia-cuda-nvcc",
    "include/cuda_runtime.h": "nvidia-cuda-runtime",
    "include/crt/host_config.h": "nvidia-cuda-crt",
    "include/nv/target": "nvidia-cuda-cccl",
}


def _missing_toolkit_pieces(cuda_home: Path, torch_cuda: str) -> list[str]:
    version = ".".join(torch_cuda.split(".")[:2])
    missing = [f"{piece} (pip install '{package}=={version}.*')"
               for piece, package in _TOOLKIT_PIECES.items() if not (cuda_home / piece).exists()]
    if not any((cuda_home / "lib").glob("libcudart.so*")) and not any(
            (cuda_home / "lib64").glob("libcudart.so*")):
        missing.append(f"lib/libcudart.so* (pip install 'nvidia-cuda-runtime=={version}.*')")
    return missing


def _libcudart_link_dir(cuda_home: Path, build_dir: Path) -> str:
    """pip's CUDA runtime ships only libcudart.so.<major>; give the linker the
    unversioned name it asks for."""
    build_dir.mkdir(parents=True, exist_ok=True)
    link = build_dir / "libcudart.so"
    if not link.exists():
        versioned = sorted((cuda_home / "lib").glob("libcudart.so.*"))
        if not versioned:
            raise RuntimeError(f"no libcudart.so.* under {cuda_home / 'lib'}")
        link.symlink_to(versioned[0])
    return str(build_dir)


def extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension

    cxx = ["-O3", "-fopenmp", "-std=c++20", "-fno-trapping-math", "-fno-math-errno",
           *CPU_LOOP_UNITS["default"]]
    exts = [
        CppExtension(
            "subind_fast._C",
            ["csrc/ops/schemas.cpp", "csrc/ops/meta.cpp", "csrc/ops/autograd.cpp",
             "csrc/ops/autocast.cpp", "csrc/ops/module.cpp", "csrc/cpu/mask_ops.cpp",
             "csrc/cpu/masked_linear.cpp", "csrc/cpu/optim.cpp",
             "csrc/cpu/loops/capability.cpp"],
            include_dirs=[INCLUDE],
            define_macros=_CPU_LOOP_MACROS,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
            # The per-capability loop objects (compile_cpu_loops) join at link time.
            depends=[str(LOOPS_DIR / f"loops_{c}.cpp") for c in CPU_LOOP_UNITS]
            + [str(h) for h in _cpu_loop_headers()],
        )
    ]

    skip = os.environ.get("SUBIND_SKIP_CUDA_BUILD") == "1"
    require = os.environ.get("SUBIND_REQUIRE_CUDA_BUILD") == "1"
    torch_cuda = torch.version.cuda
    cuda_home = None if (skip or not torch_cuda) else _cuda_home_matching(torch_cuda)
    missing = _missing_toolkit_pieces(cuda_home, torch_cuda) if cuda_home is not None else []
    if cuda_home is None or missing:
        reason = ("SUBIND_SKIP_CUDA_BUILD=1" if skip else
                  "torch has no CUDA" if not torch_cuda else
                  f"no CUDA {torch_cuda} toolkit (set CUDA_HOME or `make cuda-toolkit`)"
                  if cuda_home is None else
                  f"the CUDA toolkit at {cuda_home} lacks " + ", ".join(missing))
        if require and not skip:
            raise RuntimeError(f"SUBIND_REQUIRE_CUDA_BUILD=1 but {reason}")
        _warn_cuda_skipped(reason)
        return exts

    os.environ["CUDA_HOME"] = str(cuda_home)
    if not torch.cuda.is_available():
        # Built without a GPU to ask: A100 (sm_80) and H100 (sm_90) machine
        # code, plus PTX that newer GPUs compile.  With a GPU, torch builds for it.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    import torch.utils.cpp_extension as cpp_ext
    cpp_ext.CUDA_HOME = str(cuda_home)
    from torch.utils.cpp_extension import CUDAExtension

    link_dir = _libcudart_link_dir(cuda_home, ROOT / "build" / "cudart-link")
    exts.append(
        CUDAExtension(
            "subind_fast._C_cuda",
            ["csrc/cuda/mask_ops_cuda.cu"],
            include_dirs=[INCLUDE, str(cuda_home / "include")],
            library_dirs=[link_dir, str(cuda_home / "lib")],
            extra_compile_args={"cxx": ["-O3", "-std=c++20"],
                                "nvcc": ["-O3", "-std=c++20"]},
        )
    )
    print(f"[subind-fast] building the CUDA extension with {cuda_home} for "
          f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', 'this GPU')}")
    return exts


OPTIONAL_EXTENSIONS = ("subind_fast._C_cuda",)
# Written beside the compiled parts: what they were built against, read by
# subind_fast/ops/extensions.py before it loads them.
BUILD_RECORD = "_built_with.json"


def torch_minor(version: str) -> str:
    """'2.14' of '2.14.1+cu130'."""
    return ".".join(version.split("+")[0].split(".")[:2])


def core_dependencies() -> list[str]:
    """The kernel library's requirements.  A C++ extension is bound to the ABI
    of the torch it was compiled against, so torch is pinned to that minor
    release; without torch at metadata time (an sdist) any supported one."""
    try:
        import torch
        torch_requirement = f"torch=={torch_minor(torch.__version__)}.*"
    except ImportError:
        torch_requirement = "torch>=2.6"
    return [torch_requirement, "triton>=3.1; platform_system == 'Linux'", "numpy",
            "safetensors"]


def write_build_record(package_dir: Path, cuda_built: bool) -> None:
    import json

    import torch

    record = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_extension": cuda_built,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if cuda_built else None,
        "cpu_capabilities": list(CPU_LOOP_UNITS),
    }
    package_dir.mkdir(parents=True, exist_ok=True)
    path = package_dir / BUILD_RECORD
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(partial, path)


def _warn_cuda_skipped(reason: str) -> None:
    print(f"\n[subind-fast] WARNING: the optional CUDA extension was not built: {reason}.\n"
          "[subind-fast] The CPU product is complete without it; on a GPU the Triton backend\n"
          "[subind-fast] serves every op family (see subind_fast.backend_info()).\n")


def build_ext_class():
    """torch's BuildExtension, which also compiles the CPU loops of each
    capability for the CPU library, and for which a failed optional extension
    is one warning rather than a failed install (unless SUBIND_REQUIRE_CUDA_BUILD=1)."""
    from torch.utils.cpp_extension import BuildExtension

    base = BuildExtension.with_options(use_ninja=True)

    class BuildWithOptionalCuda(base):
        cuda_built = False

        def run(self):
            super().run()
            if any(ext.name == "subind_fast._C" for ext in self.extensions):
                write_build_record(Path(self.get_ext_fullpath("subind_fast._C")).parent,
                                   cuda_built=self.cuda_built)

        def build_extension(self, ext):
            if ext.name == "subind_fast._C":
                ext.extra_objects = compile_cpu_loops(self.build_temp)
            if ext.name not in OPTIONAL_EXTENSIONS or os.environ.get(
                    "SUBIND_REQUIRE_CUDA_BUILD") == "1":
                super().build_extension(ext)
            else:
                try:
                    super().build_extension(ext)
                except Exception as err:  # the compiler's message is already on stderr
                    _warn_cuda_skipped(f"compiling it failed ({str(err).splitlines()[0]})")
                    return
            if ext.name == "subind_fast._C_cuda":
                self.cuda_built = True

    return BuildWithOptionalCuda


def main():
    # `make` installs the package first (editable) and compiles in place after,
    # so the extensions are built once, with the CUDA toolkit already present.
    in_place_later = os.environ.get("SUBIND_SKIP_BUILD_IN_INSTALL") == "1"
    setup(
        install_requires=core_dependencies(),
        ext_modules=[] if in_place_later else extensions(),
        cmdclass={"build_ext": build_ext_class()},
    )


if __name__ == "__main__":
    main()
