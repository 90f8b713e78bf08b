# subind-fast: `make demo` runs the main job (both experiments' quick presets),
# `make test` the test suite, `make bench` the kernel benchmarks.
# Both create .venv on a fresh machine and install everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.subind-installed
# The optional CUDA extension compiles (it cannot run without a GPU) when a CUDA
# toolkit matching torch's is present; `make build` brings pip's pieces of it at
# torch.version.cuda.  A failed CUDA build is a warning, unless
# SUBIND_REQUIRE_CUDA_BUILD=1 (CI); SUBIND_SKIP_CUDA_BUILD=1 skips it.
SUBIND_SKIP_CUDA_BUILD ?= 0
SUBIND_REQUIRE_CUDA_BUILD ?= 0
export SUBIND_SKIP_CUDA_BUILD SUBIND_REQUIRE_CUDA_BUILD
CUDA_TOOLKIT_PACKAGES := nvidia-cuda-nvcc nvidia-cuda-crt nvidia-nvvm nvidia-cuda-cccl nvidia-cuda-runtime

.PHONY: all venv install build cuda-toolkit test test-fast test-install demo bench bench-layers bench-optim bench-model bench-capabilities bench-report clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel ninja

# torch first: setup.py imports it to build the extensions (--no-build-isolation).
$(STAMP): $(PY) pyproject.toml
	$(PIP) install "torch>=2.6" numpy setuptools wheel ninja
	SUBIND_SKIP_BUILD_IN_INSTALL=1 $(PIP) install -e ".[experiments,pretrained,cluster,test,bench]" --no-build-isolation
	touch $(STAMP)

venv install: $(STAMP)

cuda-toolkit: $(STAMP)
ifneq ($(SUBIND_SKIP_CUDA_BUILD),1)
	@cu=$$($(PY) -c "import torch; print(torch.version.cuda or '')"); \
	if [ -n "$$cu" ]; then \
	  pkgs=""; for p in $(CUDA_TOOLKIT_PACKAGES); do pkgs="$$pkgs $$p==$$cu.*"; done; \
	  if ! $(PIP) install -q $$pkgs; then \
	    if [ "$(SUBIND_REQUIRE_CUDA_BUILD)" = 1 ]; then \
	      echo "[subind-fast] error: could not install the CUDA $$cu toolkit:$$pkgs"; exit 1; \
	    fi; \
	    echo "[subind-fast] WARNING: could not install the CUDA $$cu toolkit ($$pkgs):"; \
	    echo "[subind-fast] the optional CUDA extension will be skipped"; \
	  fi; \
	fi
endif

# Compiles the extensions in place; redone only when csrc/ or setup.py change.
EXT_STAMP := build/.extensions-built
$(EXT_STAMP): $(STAMP) setup.py $(shell find csrc -type f 2>/dev/null)
	$(MAKE) cuda-toolkit
	$(PY) setup.py build_ext --inplace
	mkdir -p build && touch $(EXT_STAMP)

build: $(EXT_STAMP)

test: build
	$(PY) -m pytest tests -q -p no:cacheprovider

# Both install routes in a fresh venv (a wheel run with no compiler on PATH,
# and `pip install .` from a clean clone of HEAD); CI runs it after `test`.
test-install: build
	$(PY) tests/install/check_install.py

test-fast: build
	$(PY) -m pytest tests -q -m "not slow" -p no:cacheprovider

bench-layers: build
	$(PY) -m benchmarks.bench_masked_layers

bench-optim: build
	$(PY) -m benchmarks.bench_optim

bench-model: build
	$(PY) -m benchmarks.bench_model_step

bench-capabilities: build
	$(PY) -m benchmarks.bench_cpu_capabilities

# The README's benchmark tables and plot, from benchmarks/results/results.csv.
bench-report:
	$(PY) -m benchmarks.report

# The main job: both Subtask Induction experiments' quick presets (arithmetic, then
# vision), each as parallel shards on this machine's cores, then both reports.
DEMO_OUT ?= build/demo
DEMO_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
demo: build
	$(VENV)/bin/subind arithmetic --preset quick --out $(DEMO_OUT)/arithmetic --jobs $(DEMO_JOBS)
	$(VENV)/bin/subind vision --preset quick --out $(DEMO_OUT)/vision --jobs $(DEMO_JOBS)
	$(VENV)/bin/subind report $(DEMO_OUT)/arithmetic
	$(VENV)/bin/subind report $(DEMO_OUT)/vision

bench: bench-layers bench-optim bench-model bench-capabilities

clean:
	rm -rf build subind_fast/*.so *.egg-info
