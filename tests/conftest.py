import os
import sys

# Triton kernels run on the CPU through the interpreter unless the suite is
# pointed at a real GPU (SUBIND_TEST_GPU=1).  It must be set before any kernel
# module is imported: @triton.jit reads it at decoration time.
if os.environ.get("SUBIND_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

# the shared test helpers: oracle.py, and discover_entries.py (the models and data that
# command tests name as entry:discover_entries:…)
sys.path.insert(0, os.path.dirname(__file__))


def pytest_report_header(config):
    """The versions this run tested (what a fresh machine resolved)."""
    import importlib.metadata as md
    import platform

    import subind_fast as sf

    def version(dist):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    info = sf.backend_info()
    built = info["compiled"]
    return [
        f"subind-fast: python {platform.python_version()}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), triton {version('triton')}, transformers "
        f"{version('transformers')}, timm {version('timm')}, torchvision {version('torchvision')}",
        "subind-fast: compiled parts " + ", ".join(f"{k}={'yes' if v else 'no'}"
                                                  for k, v in built.items())
        + f"; CPU loops {info['cpu_capability']['running']} (runnable: "
        + ", ".join(info["cpu_capability"]["runnable"]) + ")"
        + f"; torch threads {torch.get_num_threads()}",
    ]


def pytest_collection_modifyitems(config, items):
    # Never touch CUDA at import time; decide here, once, at collection.
    has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed_and_kernels():
    import subind_fast as sf

    torch.manual_seed(0)
    with sf.use_kernels("fused"):
        yield


@pytest.fixture
def kernels(request):
    """Run the test with the <param> kernels ("fused" or "eager")."""
    import subind_fast as sf

    with sf.use_kernels(request.param):
        yield request.param


@pytest.fixture
def cpu_kernels():
    """``install(backend, names)``: for this test, the named ``subind`` ops
    run ``backend``'s Python kernels on CPU tensors, registered with the
    dispatcher itself (every caller of the op sees them; nothing is patched).
    The registrations are removed after the test."""
    import warnings

    libraries = []

    def install(backend, names):
        library = torch.library.Library("subind", "IMPL")
        with warnings.catch_warnings():  # replacing the compiled CPU kernel is the point
            warnings.simplefilter("ignore")
            for name in names:
                library.impl(name, getattr(backend, name), "CPU")
        libraries.append(library)

    yield install
    for library in libraries:
        library._destroy()
