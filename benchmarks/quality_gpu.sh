#!/usr/bin/env bash
# The quality evaluation on the device machine, in back-to-back calls that carry the FID Inception
# file in parts (prepare them here with `bash benchmarks/carry_inception.sh`, 3 parts of <= 31 MiB):
#
#   call 1:  bash benchmarks/quality_gpu.sh flexify "$OUT" [MINUTES]   carry .carry/fid1 .data
#            installs the package, copies its part to /tmp/fid, and flexifies the packaged default model's
#            base again for MINUTES (default 3) at batch 512 -> /tmp/flexidit-next/default.safetensors
#            (also returned in $OUT, with the log).
#   call 2:  bash benchmarks/quality_gpu.sh part "$OUT"               carry .carry/fid2
#   call 3:  bash benchmarks/quality_gpu.sh eval "$OUT" [eval_gpu.py options]   carry .carry/fid3 .data
#            joins and checks the Inception file, then runs benchmarks/eval_gpu.py on every GPU of the
#            machine (torchrun) on the new checkpoint if call 1 made one, else on the packaged model.
#
# .data/fashion-mnist needs the four IDX files for call 1 (training inputs), the t10k pair for call 3.
# The machine's /tmp survives between calls only while it stays warm (about 30 s after a call returns).
set -uo pipefail
stage=${1:?usage: quality_gpu.sh flexify|part|eval OUT_DIR [...]}
out=${2:?usage: quality_gpu.sh flexify|part|eval OUT_DIR [...]}
shift 2
mkdir -p "$out" /tmp/fid /tmp/flexidit-next
export PYTHONUNBUFFERED=1
for part in .carry/fid*/part_*; do cp "$part" /tmp/fid/; done
ls -l /tmp/fid
case "$stage" in
  flexify)
    minutes=${1:-3}
    python3 -m pip install --no-build-isolation --no-deps -e . >"$out/install.log" 2>&1 || { tail -30 "$out/install.log"; exit 1; }
    python3 -m flexidit_trt flexify --checkpoint flexidit_trt/weights/default.safetensors --patch-sizes 2,4 \
      --minutes "$minutes" --steps 100000 --batch-size 512 --half --data .data/fashion-mnist \
      --out /tmp/flexidit-next/default.safetensors 2>&1 | tee "$out/flexify.log" | grep -v "step/s"
    cp /tmp/flexidit-next/default.safetensors "$out/"
    ;;
  part) ;;
  eval)
    cat /tmp/fid/part_* >/tmp/fid/default_1.pt
    python3 -c "from flexidit_trt.evaluation.inception import verify_inception_file as v; print('inception ok:', v('/tmp/fid/default_1.pt'))" || exit 1
    checkpoint=()
    [ -f /tmp/flexidit-next/default.safetensors ] && checkpoint=(--checkpoint /tmp/flexidit-next/default.safetensors)
    gpus=$(nvidia-smi --list-gpus | wc -l)
    torchrun --standalone --nproc-per-node "$gpus" benchmarks/eval_gpu.py "$out" "${checkpoint[@]}" \
      --inception /tmp/fid/default_1.pt --data .data/fashion-mnist "$@" 2>&1 | grep -v "chunk/s" | tail -60
    ;;
  *) echo "unknown stage $stage (flexify, part or eval)" >&2; exit 2 ;;
esac
