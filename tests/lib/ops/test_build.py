"""The build script's CUDA handling: a toolkit missing a piece is named (with
the pip package that ships it), and a failed optional CUDA compile is a warning
unless SUBIND_REQUIRE_CUDA_BUILD=1 (what CI sets)."""
import importlib.util
from pathlib import Path

import pytest
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
    # The CPU extension is never optional.
    with pytest.raises(RuntimeError, match="Error compiling"):
        command.build_extension(Extension("subind_fast._C", ["x.cpp"]))


def test_required_cuda_build_fails_loudly(setup_module, monkeypatch):
    def failing(self, ext):
        raise RuntimeError("Error compiling objects for extension")

    monkeypatch.setattr(cpp_ext.BuildExtension, "build_extension", failing)
    monkeypatch.setenv("SUBIND_REQUIRE_CUDA_BUILD", "1")
    with pytest.raises(RuntimeError, match="Error compiling"):
        _build_command(setup_module).build_extension(Extension("subind_fast._C_cuda", ["x.cu"]))
