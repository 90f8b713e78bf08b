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
from subind_fast.ops import library

REPO = pathlib.Path(__file__).resolve().parents[3]


def test_every_op_is_defined_in_cpp_with_cpu_meta_and_autograd_kernels():
    assert len(library.OP_NAMES) == 12, library.OP_NAMES
    for name in library.OP_NAMES:
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
    for name in library.OP_NAMES:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"subind::{name}", "CUDA"), name
    cuda = sf.backend_info()["devices"]["cuda"]
    assert cuda["masked_linear"] == "triton" and cuda["sigmoid_sum"] == "triton"
    assert cuda["masked_conv"] in ("cuda (C++ extension)", "triton")


def test_no_python_string_names_a_cpp_function():
    """Python reaches compiled code only through torch.ops.subind (schemas in C++)."""
    sources = [p for p in (REPO / "subind_fast").rglob("*.py")]
    pattern = re.compile(r"\._lib\.|(?<!torch\.)\b_C\.(?!MODE_NAMES|STRETCH)\w+|\b_C_cuda\.\w+|"
                         r"load\(\"_C\w*\"\)\.(?!MODE_NAMES|STRETCH)")
    offenders = [f"{p}:{n}" for p in sources
                 for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_python_spells_the_modes_as_the_kernels_parse_them():
    from subind_fast import _C
    from subind_fast.ops.modes import MODE_NAMES, MODES, STRETCH

    assert tuple(_C.MODE_NAMES) == MODE_NAMES and _C.STRETCH == STRETCH
    assert [m.code for m in MODES] == list(range(len(MODES)))
    with pytest.raises(RuntimeError, match="unknown mask mode 'fuzzy'"):
        torch.ops.subind.mask_weight(torch.randn(3), torch.randn(3), torch.tensor(1.0), "fuzzy")


def test_an_unknown_mode_is_an_error_in_every_python_path():
    from subind_fast.ops import eager, mask_math, noise, reference
    from subind_fast.ops.cuda.triton_launch import _deterministic

    s, w, beta = torch.randn(3), torch.randn(3), torch.tensor(1.0)
    calls = [lambda: mask_math.mask_and_slope(s, beta, "fuzzy"),
             lambda: mask_math.penalty_and_slope(s, beta, "fuzzy"),
             lambda: eager.mask_weight(w, s, beta, "fuzzy"),
             lambda: reference.mask_weight(w, s, beta, "fuzzy"),
             lambda: noise.check_key(None, "fuzzy", s),
             lambda: _deterministic("fuzzy"),
             lambda: sf.mask_weight(w, s, 1.0, "fuzzy")]
    for call in calls:
        with pytest.raises(ValueError, match="mode must be one of"):
            call()


def test_the_op_list_is_the_dispatchers_and_every_op_has_each_kernel():
    """The ops are read from the dispatcher; each has a Python CUDA kernel
    (used where the CUDA extension serves none) and a reference kernel as its
    default (CompositeExplicitAutograd), so no list is kept by hand."""
    from subind_fast.ops import reference
    from subind_fast.ops.cuda import kernels

    registered = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names()
                        if n.startswith("subind::"))
    assert list(library.OP_NAMES) == registered
    assert set(kernels.KERNELS) == set(reference.KERNELS) == set(registered)
    for name in registered:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(
            f"subind::{name}", "CompositeExplicitAutograd"), name


def test_the_default_kernels_agree_with_the_cpu_kernels():
    """The reference kernels (what a device without our kernels runs) against
    the compiled CPU ones, every deterministic and sampled training mode."""
    from subind_fast.ops import reference

    gen = torch.Generator().manual_seed(0)
    x, w, s = (torch.randn(shape, generator=gen, dtype=torch.float64)
               for shape in ((5, 4), (3, 4), (3, 4)))
    beta, key = torch.tensor(2.0, dtype=torch.float64), torch.tensor([7, 1])
    for mode, noise in (("soft", None), ("hard", None), ("concrete", key), ("gumbel", key)):
        for name, args in (("masked_linear", (x, w, s, None, beta, mode, noise)),
                           ("mask_weight", (w, s, beta, mode, noise))):
            torch.testing.assert_close(reference.KERNELS[name](*args),
                                       getattr(torch.ops.subind, name)(*args))
        needs = [True, True, mode != "hard", False]
        grad = torch.randn(5, 3, generator=gen, dtype=torch.float64)
        backward = reference.KERNELS["masked_linear_backward"]
        for got, want in zip(backward(grad, x, w, s, beta, mode, needs, noise),
                             torch.ops.subind.masked_linear_backward(grad, x, w, s, beta, mode,
                                                                     needs, noise)):
            torch.testing.assert_close(got, want)


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

