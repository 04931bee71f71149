#!/usr/bin/env bash
# One device-machine session for the sampling core and the exporter: build the extension with CUDA,
# run the GPU kernel tests and the CPU suite there, export + validate DiT-XL/2, print a short summary last.
# Usage (on the GPU machine, from the repo root): bash benchmarks/gpu_checks.sh "$OUT" 2>&1 | tee "$OUT/session.log"
# (at most 8 files come back from the device tool: install.log, pytest_gpu.log and the two XL tables)
set -uo pipefail
out=${1:?usage: gpu_checks.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader); echo "$gpu"

rm -rf build
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps -e . >"$out/install.log" 2>&1 || { tail -40 "$out/install.log"; exit 1; }
echo "extension build: $(( $(date +%s) - t0 )) s; has_cuda=$(python3 -c 'import flexidit_trt._C as c; print(c.has_cuda(), c.cuda_device_count())')"

python3 -m pytest -q -m gpu tests/test_kernels_gpu.py tests/test_runtime_gpu.py tests/test_graph_pool_memory.py tests/test_bench_profile.py -rs 2>&1 | tee "$out/pytest_gpu.log" | tail -3
cpu_suite=$(python3 -m pytest -q -m "not gpu" tests 2>&1 | tail -1); echo "$cpu_suite"

python3 benchmarks/export_xl.py --out "$out/xl_p2"
python3 benchmarks/export_xl.py --out "$out/xl_p4" --patch-sizes 4 --residual off

echo "== summary =="
echo "$gpu"
echo "gpu kernels: $(tail -1 "$out/pytest_gpu.log")"
echo "cpu suite:   $cpu_suite"
cat "$out/xl_p2/export_xl.md" "$out/xl_p4/export_xl.md" 2>/dev/null
