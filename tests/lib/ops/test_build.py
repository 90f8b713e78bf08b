"""The build script: a CUDA toolkit missing a piece is named (with the pip
package that ships it), a failed optional CUDA compile is a warning unless
SUBIND_REQUIRE_CUDA_BUILD=1 (what CI sets); the package pins the torch minor
release it is compiled against and records it, and extensions built against
another one are refused with both versions named."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension as cpp_ext
from setuptools import Distribution, Extension

SETUP = Path(__file__).resolve().parents[3] / "setup.py"


@pytest.fixture(scope="module")
def setup_module():
    spec = importlib.util.spec_from_file_location("subind_setup", SETUP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # main() runs only under __main__
    return module


def _fake_toolkit(root: Path, with_cccl: bool) -> Path:
    for piece in ("bin/nvcc", "include/cuda_runtime.h", "include/crt/host_config.h",
                  "lib/libcudart.so.13"):
        (root / piece).parent.mkdir(parents=True, exist_ok=True)
        (root / piece).write_text("")
    if with_cccl:
        (root / "include/nv").mkdir(parents=True)
        (root / "include/nv/target").write_text("")
    return root


def test_missing_cccl_header_is_named_with_its_package(setup_module, tmp_path):
    home = _fake_toolkit(tmp_path / "cu13", with_cccl=False)
    missing = setup_module._missing_toolkit_pieces(home, "13.0")
    assert missing == ["include/nv/target (pip install 'nvidia-cuda-cccl==13.0.*')"]
    complete = _fake_toolkit(tmp_path / "full", with_cccl=True)
    assert setup_module._missing_toolkit_pieces(complete, "13.0") == []


def _build_command(setup_module):
    return setup_module.build_ext_class()(Distribution())


def test_failed_optional_cuda_build_warns_and_continues(setup_module, monkeypatch, capsys):
    def failing(self, ext):
        raise RuntimeError("Error compiling objects for extension")

    monkeypatch.setattr(cpp_ext.BuildExtension, "build_extension", failing)
    monkeypatch.delenv("SUBIND_REQUIRE_CUDA_BUILD", raising=False)
    command = _build_command(setup_module)
    command.build_extension(Extension("subind_fast._C_cuda", ["x.cu"]))
    out = capsys.readouterr().out
    assert "WARNING: the optional CUDA extension was not built" in out
    assert "Error compiling objects" in out
    # The CPU extension is never optional (its per-ISA loops are not compiled here).
    monkeypatch.setattr(setup_module, "compile_cpu_loops", lambda build_temp: [])
    with pytest.raises(RuntimeError, match="Error compiling"):
        command.build_extension(Extension("subind_fast._C", ["x.cpp"]))


def test_required_cuda_build_fails_loudly(setup_module, monkeypatch):
    def failing(self, ext):
        raise RuntimeError("Error compiling objects for extension")

    monkeypatch.setattr(cpp_ext.BuildExtension, "build_extension", failing)
    monkeypatch.setenv("SUBIND_REQUIRE_CUDA_BUILD", "1")
    with pytest.raises(RuntimeError, match="Error compiling"):
        _build_command(setup_module).build_extension(Extension("subind_fast._C_cuda", ["x.cu"]))


def test_torch_is_pinned_to_the_minor_release_the_extensions_are_built_against(setup_module):
    import torch

    assert setup_module.torch_minor("2.14.1+cu130") == "2.14"
    assert setup_module.torch_minor("2.6.0") == "2.6"
    pinned = setup_module.core_dependencies()[0]
    assert pinned == f"torch=={setup_module.torch_minor(torch.__version__)}.*"


def test_the_build_record_names_torch_and_the_cpu_capabilities(setup_module, tmp_path):
    import json

    import torch

    setup_module.write_build_record(tmp_path / "pkg", cuda_built=False)
    record = json.loads((tmp_path / "pkg" / setup_module.BUILD_RECORD).read_text())
    assert record["torch"] == torch.__version__ and record["cuda_extension"] is False
    assert record["cpu_capabilities"] == list(setup_module.CPU_LOOP_UNITS)
    assert [p.name for p in (tmp_path / "pkg").iterdir()] == [setup_module.BUILD_RECORD]


def test_extensions_built_for_another_torch_minor_are_refused_naming_both(tmp_path, monkeypatch):
    import json

    from subind_fast.ops import extensions

    record = tmp_path / "_built_with.json"
    assert extensions.torch_mismatch(record, "2.14.1") == ""  # no record: an older build
    record.write_text(json.dumps({"torch": "2.14.1+cu130"}))
    assert extensions.torch_mismatch(record, "2.14.0+cpu") == ""
    why = extensions.torch_mismatch(record, "2.15.0")
    assert "built against torch 2.14.1+cu130, but torch 2.15.0 is installed" in why
    assert "pip install 'torch==2.14.*'" in why and "make build" in why

    monkeypatch.setattr(extensions, "BUILD_RECORD", record)
    monkeypatch.setattr(torch, "__version__", "2.15.0")
    extensions._try_load.cache_clear()
    try:
        with pytest.raises(extensions.MissingKernelError, match="torch 2.15.0 is installed"):
            extensions.load("_C")
    finally:
        extensions._try_load.cache_clear()
