#!/usr/bin/env bash
# The serving bench on the GPU machine: Ray Serve's wheels carried in parts (benchmarks/carry_parts.sh, the
# wheels of `pip download "ray[serve]==2.60.0"` less numpy, py-spy and virtualenv's, under wheels/), installed
# outside the checkout, then benchmarks/serve_bench.py against `flexidit-trt serve` with DiT-XL/2's random
# weights on the torch backend (CUDA graphs; no --compile: inductor would compile every batch size the
# stream makes, tens of seconds each).
#
#   bash benchmarks/serve_gpu.sh OUT [REPLICAS] [serve_bench.py options]     (after carry_parts.sh --unpack)
set -uo pipefail
out=${1:?usage: serve_gpu.sh OUT [REPLICAS] [serve_bench options]}
shift
replicas=1
if [[ ${1:-} =~ ^[0-9]+$ ]]; then replicas=$1; shift; fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/carry/x/wheels/*.whl >"$out/pip.log" 2>&1 || { tail -20 "$out/pip.log"; exit 1; }
export PYTHONPATH=/tmp/site
python3 -m pip install --no-build-isolation --no-deps -e . >"$out/install.log" 2>&1 || { tail -30 "$out/install.log"; exit 1; }
python3 -c "import ray, ray.serve, torch; print('ray', ray.__version__, '| torch', torch.__version__, '|', torch.cuda.get_device_name())"
nvidia-smi --query-gpu=index,name,memory.used --format=csv,noheader
python3 benchmarks/serve_bench.py "$out" --classes 1000 "$@" -- \
  --model dit_xl --backend torch --replicas "$replicas" --max-batch 16 --max-queue 64 --batch-wait-ms 20
