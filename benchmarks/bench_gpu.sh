#!/usr/bin/env bash
# `flexidit-trt bench` on the device machine in one command: install the package (builds the CUDA
# extension), run the bench's GPU tests, then DiT-XL/2 (random weights, bf16, 250 DDPM steps, CFG 4.0) at
# 1 and 8 images and budgets 1.0 and 0.5 on every backend (the ones that cannot run here say why) with the
# reference DiT loop in the same run, then each torch engine's forward under torch.profiler (--profile:
# eager, no CUDA graph; kernels per forward, busy vs wall, time by kernel category, the limit). Prints the
# run's tables last.
#
# Usage (repo root, on the GPU machine):   bash benchmarks/bench_gpu.sh "$OUT" [more bench options]
#   BUILD_AOTI=1 bash benchmarks/bench_gpu.sh "$OUT" --backends aoti
#     first builds the AOTInductor packages (`flexidit-trt build --aoti`, ~5 min for DiT-XL), then
#     benches them: a second call of its own (a machine comes back bare, and both do not fit 10 minutes).
#     AOTI_BUILD_ARGS adds build options (e.g. "--no-aoti-gelu-epilogue"); GPU_TESTS=0 skips the GPU tests;
#     PROFILE=0 skips the profiles (--profile).
#   CALL_LIMIT_S=545 GPU_TESTS=0 PROFILE=0 bash benchmarks/bench_gpu.sh "$OUT" \
#       --backends diffusers-compiled,torch-flash,diffusers
#     diffusers' DiTPipeline beside the engine (diffusers and its two small dependencies installed first).
#   ORT_GPU=1 bash benchmarks/bench_gpu.sh "$OUT" --backends torch-flash,ort
#     first joins the onnxruntime-gpu parts carried into /tmp/carry-ort (benchmarks/carry_ort.sh) and
#     installs the wheel outside the checkout, so the ort backend runs on ONNX Runtime's CUDA provider.
#
# Comes back (the device tool returns at most 8 files): $OUT/bench.log, $OUT/install.log and
# $OUT/results.tgz (results/<gpu>/<date>-<backend>.json, REPORT.md and the plots). Here:
#   tar -xzf <files_at>/results.tgz -C /tmp && cp -r /tmp/results/*/ benchmarks/results/ && flexidit-trt bench report
set -uo pipefail
out=${1:?usage: bench_gpu.sh OUT_DIR [bench options]}
shift
# The bench stops before the device call's 600 s limit (CALL_LIMIT_S after this line), so the backends
# that finished are still packed and come back.
deadline=$(($(date +%s) + ${CALL_LIMIT_S:-565}))
mkdir -p "$out"
export PYTHONUNBUFFERED=1
work=$(mktemp -d)  # engines built by BUILD_AOTI live outside the checkout
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  t0=$(date +%s)
  rm -rf build
  python3 -m pip install --no-build-isolation --no-deps -e . >"$out/install.log" 2>&1 || {
    tail -40 "$out/install.log"
    exit 1
  }
  echo "install + extension build: $(($(date +%s) - t0)) s"
  if [ "${ORT_GPU:-0}" = 1 ]; then
    CARRY_TMP=/tmp/carry-ort bash benchmarks/carry_parts.sh --unpack || exit 1
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/carry-ort/x/onnxruntime_gpu-*.whl ||
      exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
  fi
  [ "${GPU_TESTS:-1}" = 0 ] || python3 -m pytest -q -m gpu tests/test_bench_gpu.py tests/test_bench_profile.py tests/test_graph_pool_memory.py tests/test_precompute_modulation.py tests/test_engine_levers.py tests/test_runtime_gpu.py -rfs 2>&1 | grep -E "^(FAILED|SKIPPED|ERROR)|passed|failed|Error"
  if [ "${BUILD_AOTI:-0}" = 1 ]; then
    t1=$(date +%s)
    # shellcheck disable=SC2086  # AOTI_BUILD_ARGS: more build options, word-split on purpose
    python3 -m flexidit_trt build --model dit_xl --aoti --precision bf16 --batch-sizes 1,8 --workdir "$work" \
      ${AOTI_BUILD_ARGS:-} 2>&1 | tail -8
    echo "aoti build: $(($(date +%s) - t1)) s"
  fi
  t2=$(date +%s)
  left=$((deadline - t2))
  if ((left > 0)); then
    # SIGINT first (Python stops between backends' files); KILL 10 s later if inductor's workers hold on.
    profile=--profile
    [ "${PROFILE:-1}" = 0 ] && profile=
    # shellcheck disable=SC2086  # $profile: one option or none
    timeout -k 10 --signal=INT "$left" python3 -m flexidit_trt bench --model dit_xl --batch-sizes 1,8 \
      --budgets 1.0,0.5 --steps 250 --precision bf16 --workdir "$work" --out "$out/results" $profile "$@"
    echo "bench exit code $?, $(($(date +%s) - t2)) s"
  else
    echo "bench not run: no time left before the call's limit"
  fi
  python3 -m flexidit_trt bench report --results "$out/results" >/dev/null && echo "report: $out/results/REPORT.md"
  tar -czf "$out/results.tgz" -C "$out" results && rm -rf "$out/results"
} 2>&1 | tee "$out/bench.log"
