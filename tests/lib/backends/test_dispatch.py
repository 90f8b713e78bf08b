"""The one kernel choice (fused | eager), the C++ op registration and missing kernels."""
import glob
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch

import subind_fast as sf
from subind_fast import _ops

REPO = pathlib.Path(__file__).resolve().parents[3]


def test_every_op_is_defined_in_cpp_with_cpu_meta_and_autograd_kernels():
    for name in _ops.OP_NAMES:
        qualified = f"subind::{name}"
        for key in ("CPU", "Meta"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, key), (name, key)
        assert getattr(torch.ops.subind, name).default._schema.name == qualified
    for name in ("mask_weight", "masked_linear", "masked_conv", "sigmoid_sum"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"subind::{name}", "Autograd")
    for name in ("masked_linear", "masked_conv"):
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"subind::{name}", key)


def test_every_op_has_a_cuda_kernel_registered_without_touching_a_gpu():
    for name in _ops.OP_NAMES:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"subind::{name}", "CUDA"), name
    cuda = sf.backend_info()["devices"]["cuda"]
    assert cuda["masked_linear"] == "triton" and cuda["sigmoid_sum"] == "triton"
    assert cuda["masked_conv"] in ("cuda (C++ extension)", "triton")


def test_no_python_string_names_a_cpp_function():
    """Python reaches compiled code only through torch.ops.subind (schemas in C++)."""
    sources = [p for p in (REPO / "subind_fast").rglob("*.py")]
    pattern = re.compile(r"\._lib\.|\b_C\.(?!MODE_NAMES)\w+|\b_C_cuda\.\w+|load\(\"_C\w*\"\)\.(?!MODE_NAMES)")
    offenders = [f"{p}:{n}" for p in sources
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_python_spells_the_modes_as_the_kernels_parse_them():
    from subind_fast import _C
    from subind_fast._validation import MODE_CODES, MODES

    assert tuple(_C.MODE_NAMES) == MODES
    assert [MODE_CODES[m] for m in MODES] == list(range(len(MODES)))
    with pytest.raises(RuntimeError, match="unknown mask mode 'fuzzy'"):
        torch.ops.subind.mask_weight(torch.randn(3), torch.randn(3), torch.tensor(1.0), "fuzzy")


def test_eager_kernels_compute_the_same_as_the_fused_ones():
    x, w, s, b = torch.randn(3, 5), torch.randn(4, 5), torch.randn(4, 5), torch.randn(4)
    fused = sf.masked_linear(x, w, s, 2.0, b)
    with sf.use_kernels("eager"):
        assert sf.backend_info()["kernels"] == "eager"
        eager = sf.masked_linear(x, w, s, 2.0, b)
    assert sf.backend_info()["kernels"] == "fused"
    torch.testing.assert_close(eager, fused)


def test_a_bad_kernel_choice_names_the_variable():
    with pytest.raises(ValueError, match="kernels='fastest' is not one of"):
        sf.set_kernels("fastest")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SUBIND_KERNELS": "fastest"}
    out = subprocess.run([sys.executable, "-c", "import subind_fast"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode != 0 and "SUBIND_KERNELS='fastest' is not one of" in out.stderr


def test_missing_extension_import_works_and_use_raises_clearly():
    code = (
        "import sys; sys.modules['subind_fast._C'] = None\n"
        "import torch, subind_fast as sf\n"
        "assert sf.backend_info()['compiled']['_C (schemas, cpu)'] is False\n"
        "try:\n"
        "    sf.masked_linear(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), 1.0)\n"
        "except sf.MissingKernelError as e:\n"
        "    print('RAISED', e)\n"
        "sf.set_kernels('eager')\n"
        "print('EAGER', tuple(sf.masked_linear(torch.randn(2, 3), torch.randn(2, 3),\n"
        "                                      torch.randn(2, 3), 1.0).shape))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("SUBIND_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RAISED subind_fast._C is not available" in out.stdout
    assert "set_kernels('eager')" in out.stdout or "--kernels eager" in out.stdout
    assert "EAGER (2, 2)" in out.stdout


def test_cuda_extension_links_and_rejects_cpu_tensors_when_built():
    """The only check CUDA code gets without a GPU: it compiled, linked, loads,
    registered its kernels, and its host-side checks answer clearly."""
    package = pathlib.Path(sf.__file__).parent
    if not glob.glob(str(package / "_C_cuda*.so")):
        pytest.skip("the CUDA extension was not built on this machine")
    assert sf.backend_info()["compiled"]["_C_cuda (cuda)"]
    assert sf.backend_info()["devices"]["cuda"]["masked_conv"] == "cuda (C++ extension)"
    kernel = torch._C._dispatch_get_registrations_for_dispatch_key("CUDA")
    assert "subind::mask_weight" in kernel


def test_a_backend_must_implement_every_family_it_declares():
    from subind_fast.backends.base import Backend, ComposedBackend

    with pytest.raises(TypeError, match=r"does not define \['sigmoid_sum', 'sigmoid_sum_backward'\]"):
        type("Half", (ComposedBackend,), {"families": frozenset({"l0"})})
    with pytest.raises(TypeError, match="unknown op families"):
        type("Odd", (Backend,), {"families": frozenset({"attention"})})
