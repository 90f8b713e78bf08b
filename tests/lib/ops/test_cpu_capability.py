"""The CPU library picks its loops' ISA at run time (csrc/cpu/loops): the best
the running CPU executes, or SUBIND_CPU_CAPABILITY's.  Every capability this
machine runs is forced in turn and the kernel tests — each a comparison with
the float64 oracle — run under it; a bad override fails the import, naming
the variable; backend_info() says what runs."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import subind_fast as sf

OVERRIDE = "SUBIND_CPU_CAPABILITY"
ALL_CAPABILITIES = ("default", "avx2", "avx512")
TESTS = Path(__file__).resolve().parents[2]
ROOT = TESTS.parent
# The kernel tests, each against the float64 oracle: mask passes in every mode
# and dtype, the fused penalty, linear and convolution, the optimizer steps.
KERNEL_TESTS = [TESTS / "lib" / "ops" / name for name in (
    "test_16bit_weights.py", "test_mask_weight_and_l0.py", "test_fused_penalty.py",
    "test_masked_linear.py", "test_masked_conv.py", "test_mixed_precision.py")] + [
    TESTS / "lib" / "subnetworks" / "test_optim.py"]

RUNNABLE = sf.backend_info()["cpu_capability"]["runnable"]


def _env(capability):
    return {**os.environ, OVERRIDE: capability}


def test_the_best_runnable_capability_runs_by_default():
    info = sf.backend_info()["cpu_capability"]
    assert info["override"] == OVERRIDE
    assert RUNNABLE[0] == "default" and set(RUNNABLE) <= set(ALL_CAPABILITIES)
    if os.environ.get(OVERRIDE):
        assert info["running"] == os.environ[OVERRIDE]
    else:
        assert info["running"] == RUNNABLE[-1]


@pytest.mark.slow
@pytest.mark.parametrize("capability", ALL_CAPABILITIES)
def test_kernels_match_the_oracle_under_each_capability(capability):
    if capability not in RUNNABLE:
        pytest.skip(f"this CPU does not run the {capability} loops (it runs {RUNNABLE})")
    probe = subprocess.run(
        [sys.executable, "-c", "import subind_fast as sf; "
         "print(sf.backend_info()['cpu_capability']['running'])"],
        env=_env(capability), capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == capability
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         *map(str, KERNEL_TESTS)], cwd=ROOT, env=_env(capability), capture_output=True,
        text=True)
    assert run.returncode == 0, f"under {OVERRIDE}={capability}:\n{run.stdout[-6000:]}"
    assert " passed" in run.stdout.splitlines()[-1]


@pytest.mark.parametrize("value, message", [
    ("sse9", f"{OVERRIDE}=sse9 is not a CPU capability of this build; choose one of: default"),
])
def test_an_unknown_capability_fails_the_import_naming_the_variable(value, message):
    run = subprocess.run([sys.executable, "-c", "import subind_fast"], env=_env(value),
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert message in run.stderr


def test_a_capability_this_cpu_lacks_fails_the_import():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("off x86-64 the build has only the default loops")
    lacking = [c for c in ALL_CAPABILITIES if c not in RUNNABLE]
    if not lacking:
        pytest.skip("this CPU runs every capability of the build")
    run = subprocess.run([sys.executable, "-c", "import subind_fast"], env=_env(lacking[-1]),
                         capture_output=True, text=True)
    assert run.returncode != 0
    assert f"{OVERRIDE}={lacking[-1]}: this CPU cannot run the {lacking[-1]} loops" in run.stderr
