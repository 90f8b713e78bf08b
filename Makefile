# subind-fast: `make demo` runs the main job (the arithmetic experiment, quick preset),
# `make test` the test suite, `make bench` the kernel benchmarks.
# Both create .venv on a fresh machine and install everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.subind-installed
# The CUDA extension compiles (it cannot run here) when a CUDA toolkit matching
# torch's is present; `make build` brings pip's nvcc.  SUBIND_SKIP_CUDA_BUILD=1 skips it.
SUBIND_SKIP_CUDA_BUILD ?= 0
export SUBIND_SKIP_CUDA_BUILD

.PHONY: all venv install build cuda-toolkit test test-fast demo bench bench-layers bench-optim clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel ninja

# torch first: setup.py imports it to build the extensions (--no-build-isolation).
$(STAMP): $(PY) pyproject.toml
	$(PIP) install "torch>=2.6" numpy setuptools wheel ninja
	SUBIND_SKIP_BUILD_IN_INSTALL=1 $(PIP) install -e ".[test,bench]" --no-build-isolation
	touch $(STAMP)

venv install: $(STAMP)

cuda-toolkit: $(STAMP)
ifneq ($(SUBIND_SKIP_CUDA_BUILD),1)
	@cu=$$($(PY) -c "import torch; print(torch.version.cuda or '')"); \
	if [ -n "$$cu" ]; then \
	  $(PIP) install -q "nvidia-cuda-nvcc==$$cu.*" "nvidia-cuda-crt==$$cu.*" "nvidia-nvvm==$$cu.*" \
	    || echo "[subind-fast] no pip CUDA $$cu compiler: the CUDA extension will be skipped"; \
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

test-fast: $(STAMP)
	$(PY) -m pytest tests -q -m "not slow" -p no:cacheprovider

bench-layers: build
	$(PY) benchmarks/bench_masked_layers.py

bench-optim: build
	$(PY) benchmarks/bench_optim.py

# The main job: the arithmetic Subtask Induction experiment (quick preset), then its report.
DEMO_OUT ?= build/demo-arithmetic
demo: build
	$(VENV)/bin/subind arithmetic --preset quick --out $(DEMO_OUT)
	$(VENV)/bin/subind report $(DEMO_OUT)

bench: bench-layers bench-optim

clean:
	rm -rf build subind_fast/*.so *.egg-info
