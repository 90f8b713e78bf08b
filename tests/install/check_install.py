"""The two install routes, each checked in a fresh virtual environment that
holds only the kernel library's requirements (torch, triton, numpy,
safetensors; pytest and hypothesis to test): `make test-install` runs this, and CI after
`make test`.

1. From source: `pip install --no-build-isolation .` in a clean clone (a
   regular, not editable, install), then the kernel library's tests.
2. A wheel: `pip wheel --no-build-isolation` in the clone (by the interpreter
   that runs this script, which has the compilers), installed into the same
   environment once the source install is removed, and run with a PATH that
   holds no C/C++ compiler and no nvcc, in an environment without CUDA's
   compiler packages: the kernel library's tests, then the README's usage
   example (which needs transformers, installed for it).

Either route's tests run from a copy of tests/ outside the clone, so the
installed package is what they import (checked).  Usage:
    python tests/install/check_install.py [--keep] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPILERS = ("gcc", "g++", "cc", "c++", "clang", "clang++", "nvcc")
CUDA_COMPILER_PACKAGES = ("nvidia-cuda-nvcc", "nvidia-cuda-crt", "nvidia-nvvm", "nvidia-cuda-cccl")
# What the tests' subprocesses may run besides the venv's python.
TOOLS = ("sh", "bash", "env", "uname", "cat", "ls")
# The kernel library's tests; test_build.py checks the build script, not an install.
KERNEL_TESTS = ["tests/lib", "--ignore=tests/lib/ops/test_build.py"]


def step(message: str) -> None:
    print(f"\n[check-install] {message}", flush=True)


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("  $", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(list(map(str, cmd)), check=True, **kwargs)


def pinned_requirements() -> list[str]:
    """The kernel library's requirements and the tests' tools, at the versions
    this interpreter has (what the wheel was built against; no resolver picks a
    newer torch)."""
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"triton=={md.version('triton')}",
            f"numpy=={md.version('numpy')}", f"safetensors=={md.version('safetensors')}",
            *testing_tools()]


def testing_tools() -> list[str]:
    """What the tests themselves use (the `test` extra, less the benchmark plugin)."""
    return [f"pytest=={md.version('pytest')}", f"hypothesis=={md.version('hypothesis')}"]


def compiler_free_path(work: Path, venv: Path) -> str:
    """A PATH of the venv's scripts and a few shell tools, none a compiler."""
    tools = work / "tools"
    tools.mkdir(exist_ok=True)
    for name in TOOLS:
        found = shutil.which(name)
        if found and not (tools / name).exists():
            (tools / name).symlink_to(found)
    return f"{venv / 'bin'}:{tools}"


def tests_copy(clone: Path, work: Path) -> Path:
    """tests/ (and benchmarks/, which the GPU static check runs), README.md and
    setup.py of the clone, without the package."""
    copy = work / "tests-only"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(clone / "tests", copy / "tests")
    shutil.copytree(clone / "benchmarks", copy / "benchmarks")
    for name in ("README.md", "setup.py", "pyproject.toml"):
        shutil.copy2(clone / name, copy / name)
    return copy


def run_tests(venv: Path, copy: Path, env: dict, *args: str) -> None:
    python = venv / "bin" / "python"
    where = run([python, "-c", "import subind_fast, sys; print(subind_fast.__file__); "
                 "print(subind_fast.backend_info()['compiled'])"], cwd=copy, env=env,
                capture_output=True, text=True).stdout
    print("  " + where.replace("\n", "\n  "))
    assert str(venv) in where.splitlines()[0], "the tests would not import the installed package"
    run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=copy, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="where to work (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="subind-install-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    base_python = getattr(sys, "_base_executable", sys.executable)
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    try:
        step(f"two clean clones of {ROOT} (HEAD): one per route, so no build output is shared")
        clones = {}
        for route in ("wheel", "source"):
            clones[route] = work / f"clone-{route}"
            shutil.rmtree(clones[route], ignore_errors=True)
            run(["git", "clone", "-q", ROOT, clones[route]])

        step("the wheel, built by this interpreter (it has the compilers)")
        dist = work / "dist"
        shutil.rmtree(dist, ignore_errors=True)
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
             "-w", dist, clones["wheel"]], env=clean_env)
        wheels = sorted(dist.glob("subind_fast-*.whl"))
        assert len(wheels) == 1, f"expected one wheel in {dist}, found {wheels}"
        names = zipfile.ZipFile(wheels[0]).namelist()
        compiled = [name for name in names if name.endswith(".so")]
        print(f"  {wheels[0].name}: {', '.join(compiled)}")
        assert any(name.startswith("subind_fast/_C.") for name in compiled), "no CPU library"
        metadata = zipfile.ZipFile(wheels[0]).read(
            next(name for name in names if name.endswith(".dist-info/METADATA"))).decode()
        torch_pin = [line for line in metadata.splitlines()
                     if line.startswith("Requires-Dist: torch")]
        print(f"  {torch_pin}")
        assert torch_pin and "==" in torch_pin[0], "the wheel does not pin its torch"
        assert "subind_fast/_built_with.json" in names, "the wheel has no build record"

        step("a fresh venv with the kernel library's requirements only")
        venv = work / "venv"
        shutil.rmtree(venv, ignore_errors=True)
        run([base_python, "-m", "venv", venv])
        pip = [venv / "bin" / "python", "-m", "pip"]
        run([*pip, "install", "-q", *pinned_requirements()], env=clean_env)

        step("route 1: pip install --no-build-isolation . (from the clone, not editable)")
        run([*pip, "install", "-q", "setuptools>=77", "wheel", "ninja"], env=clean_env)
        run([*pip, "install", "-q", "--no-build-isolation", clones["source"]],
            env={**clean_env, "SUBIND_SKIP_CUDA_BUILD": "1", "SUBIND_REQUIRE_CUDA_BUILD": "0"})
        copy = tests_copy(clones["source"], work)
        run_tests(venv, copy, clean_env, *KERNEL_TESTS)
        run([*pip, "uninstall", "-q", "-y", "subind-fast", "setuptools", "wheel", "ninja"])

        step("route 2: the wheel, with no compiler on PATH and no CUDA compiler packages")
        installed = run([*pip, "list", "--format=freeze"], capture_output=True, text=True).stdout
        found = [p for p in CUDA_COMPILER_PACKAGES if p in installed]
        assert not found, f"CUDA compiler packages in the venv: {found}"
        env = {**clean_env, "PATH": compiler_free_path(work, venv)}
        present = run([venv / "bin" / "python", "-c", "import shutil; print([c for c in "
                       f"{COMPILERS!r} if shutil.which(c)])"], env=env, capture_output=True,
                      text=True).stdout.strip()
        assert present == "[]", f"compilers on the restricted PATH: {present}"
        run([*pip, "install", "-q", wheels[0]], env=env)
        run_tests(venv, copy, env, *KERNEL_TESTS)

        step("route 2: the README's usage example (installing transformers for it)")
        run([*pip, "install", "-q", f"transformers=={md.version('transformers')}"], env=env)
        run_tests(venv, copy, env, "tests/test_readme_examples.py::test_readme_example_runs[0]")
        step(f"both routes passed in {time.monotonic() - started:.0f} s")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"[check-install] kept {work}")


if __name__ == "__main__":
    main()
