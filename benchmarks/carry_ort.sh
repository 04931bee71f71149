#!/usr/bin/env bash
# Get onnxruntime-gpu onto the device machine (no network there; its wheel is 256 MB, a call carries
# 64 MiB with the ~42 MiB tree): download the CUDA 13 build here and split it into parts .carry/ort/part1,
# part2, ... (benchmarks/carry_parts.sh; git-ignored), one per device call, back to back:
#   calls 1 .. N-1:  mkdir -p /tmp/carry-ort && cp .carry/ort/part*/* /tmp/carry-ort/      (carry .carry/ort/partK)
#   call N:          the same, then  ORT_GPU=1 bash benchmarks/bench_gpu.sh "$OUT" --backends torch-flash,ort
#                    (bench_gpu.sh joins and checks the parts, installs the wheel outside the checkout)
# Its needs (numpy, protobuf, flatbuffers, packaging) are on the device already; CUDA and cuDNN come from
# torch's wheels there (the ort backend calls onnxruntime.preload_dlls).
#
# Usage (repo root, on this machine):   bash benchmarks/carry_ort.sh [PART_MiB]   (default 20: a part and the ~42 MiB tree fit one call)
set -euo pipefail
part_mib=${1:-20}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/stage"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$work/stage" onnxruntime-gpu==1.31.1
repo=$PWD
(cd "$work/stage" && bash "$repo/benchmarks/carry_parts.sh" "$part_mib" onnxruntime_gpu-*.whl >/dev/null)
rm -rf .carry/ort
mkdir -p .carry/ort
mv "$work"/stage/.carry/part* .carry/ort/
du -sh .carry/ort/part[0-9]* | sed 's/^/carry: /'
echo "carry .carry/ort/part1 .. in order, one per call (see this script's header)"
