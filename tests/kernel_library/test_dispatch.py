"""The single dispatch point, the SUBIND_BACKEND override and missing kernels."""
import os
import subprocess
import sys

import pytest
import torch

import subind_fast as sf
from subind_fast import dispatch


def test_override_to_reference(monkeypatch):
    x, w, s = torch.randn(3, 5), torch.randn(4, 5), torch.randn(4, 5)
    compiled = sf.masked_linear(x, w, s, 2.0)
    monkeypatch.setenv("SUBIND_BACKEND", "reference")
    info = sf.backend_info()
    assert info["override"] == "reference"
    assert info["devices"]["cpu"] == {f: "reference" for f in dispatch.FAMILIES}
    torch.testing.assert_close(sf.masked_linear(x, w, s, 2.0), compiled)


def test_bad_override_names_the_variable(monkeypatch):
    monkeypatch.setenv("SUBIND_BACKEND", "fastest")
    with pytest.raises(ValueError, match="SUBIND_BACKEND='fastest' is not one of"):
        sf.masked_linear(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), 1.0)


def test_gpu_backend_cannot_be_forced_onto_cpu_tensors(monkeypatch):
    monkeypatch.setenv("SUBIND_BACKEND", "triton")
    with pytest.raises(ValueError, match="SUBIND_BACKEND=triton cannot serve cpu tensors"):
        sf.masked_linear(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), 1.0)


def test_cuda_defaults_are_reported_without_touching_a_gpu():
    cuda = sf.backend_info()["devices"]["cuda"]
    assert cuda["linear"] == "triton" and cuda["l0"] == "triton"
    assert cuda["conv"] in ("cuda", "triton")


def test_missing_extension_import_works_and_use_raises_clearly():
    code = (
        "import sys; sys.modules['subind_fast._C'] = None\n"
        "import torch, subind_fast as sf\n"
        "assert sf.backend_info()['compiled']['_C (cpu)'] is False\n"
        "try:\n"
        "    sf.masked_linear(torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 3), 1.0)\n"
        "except sf.MissingKernelError as e:\n"
        "    print('RAISED', e)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("SUBIND_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RAISED subind_fast._C is not available" in out.stdout
    assert "SUBIND_BACKEND=reference" in out.stdout


def test_cuda_extension_links_and_rejects_cpu_tensors_when_built():
    """The only check CUDA code gets without a GPU: it compiled, linked, loads,
    and its host-side checks answer clearly."""
    import glob
    import pathlib

    package = pathlib.Path(sf.__file__).parent
    if not glob.glob(str(package / "_C_cuda*.so")):
        pytest.skip("the CUDA extension was not built on this machine")
    from subind_fast import _C_cuda

    assert {"mask_weight", "mask_weight_backward"} <= set(dir(_C_cuda))
    with pytest.raises(RuntimeError, match="weight must be a CUDA tensor"):
        _C_cuda.mask_weight(torch.randn(3), torch.randn(3), torch.tensor(1.0), 0)


def test_forcing_a_backend_without_an_op_family_is_a_clear_error(monkeypatch):
    """The cuda backend has no L0 or optimizer kernels: say so, before any call."""
    monkeypatch.setenv("SUBIND_BACKEND", "cuda")
    for family in ("l0", "optim"):
        with pytest.raises(ValueError, match=f"SUBIND_BACKEND=cuda does not implement the {family}"):
            dispatch.backend_name("cuda", family)
    assert dispatch.backend_name("cuda", "conv") == "cuda"
    info = sf.backend_info()
    assert info["devices"]["cuda"]["l0"].startswith("error: SUBIND_BACKEND=cuda does not")


def test_capability_table_is_declared_by_each_backend():
    table = sf.backend_info()["capabilities"]
    assert table["reference"] == {"devices": "any", "families": sorted(dispatch.FAMILIES)}
    assert table["cpu"]["families"] == sorted(dispatch.FAMILIES)
    assert table["cuda"] == {"devices": ["cuda"], "families": ["conv", "linear", "mask", "sampled"]}
    assert table["triton"]["families"] == sorted(set(dispatch.FAMILIES) - {"sampled"})


def test_an_undeclared_family_raises_unsupported_op_error():
    from subind_fast.backends.base import UnsupportedOpError

    cuda = dispatch.get_backend("cuda")  # constructing it touches no GPU and no extension
    with pytest.raises(UnsupportedOpError, match="cuda backend does not implement the l0"):
        cuda.sigmoid_sum(torch.randn(3), torch.tensor(1.0))


def test_a_backend_must_implement_every_family_it_declares():
    from subind_fast.backends.base import Backend, ComposedBackend

    with pytest.raises(TypeError, match=r"does not define \['sigmoid_sum', 'sigmoid_sum_backward'\]"):
        type("Half", (ComposedBackend,), {"families": frozenset({"l0"})})
    with pytest.raises(TypeError, match="unknown op families"):
        type("Odd", (Backend,), {"families": frozenset({"attention"})})
