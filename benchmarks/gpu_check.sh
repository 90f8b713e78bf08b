#!/usr/bin/env bash
# The one device check: on a machine with a CUDA GPU, run the GPU tests and
# the GPU benchmarks in a bounded time (about 8 minutes), and leave every
# number, with the device's name, under ${OUT:-gpu-check}/.  Run it from the
# repository root after `make build` (or with a .venv carried over).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.csv" 2>&1
"$py" -c "import torch, subind_fast as sf; print(torch.cuda.get_device_name(0)); print(sf.backend_info())" \
    > "$out/backend.txt" 2>&1
# GPU tests: the kernels against the float64 oracle, the Triton kernels compiled for real.
SUBIND_TEST_GPU=1 timeout 240 "$py" -m pytest -q -m "gpu or interpret" tests/lib \
    > "$out/tests.txt" 2>&1
echo "tests: exit $?" >> "$out/tests.txt"
# Benchmarks (each bounded; results also appended to the CSV, which comes back).
timeout 150 "$py" -m benchmarks.bench_masked_layers --device cuda --dtype bfloat16 --budget 2 \
    --csv "$out/results.csv" > "$out/bench_layers.txt" 2>&1
timeout 60 "$py" -m benchmarks.bench_optim --device cuda --csv "$out/results.csv" \
    > "$out/bench_optim.txt" 2>&1
timeout 60 "$py" -m benchmarks.bench_model_step --device cuda --csv "$out/results.csv" \
    > "$out/bench_model_step.txt" 2>&1
tail -n 3 "$out"/*.txt
