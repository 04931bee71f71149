#!/usr/bin/env bash
# The quality work on the device machine, in back-to-back calls that carry the FID Inception file and
# Fashion-MNIST in parts. Prepare the parts here: `bash benchmarks/carry_inception.sh` (20-MiB parts: the tree is ~42 MiB,
# so parts of 20 MiB fit a 64 MiB call: 6 parts; the dataset comes first and is whole once parts 1-2 are there).
#
# Then call k (k = 1 .. N) carries .carry/partk and runs one stage; every stage first copies its part to
# /tmp/carry and, once the last part (with all.sha256) is there, unpacks them all (checked):
#   bash benchmarks/quality_gpu.sh part "$OUT"                                 (calls 1 .. N-1)
#   bash benchmarks/quality_gpu.sh flexify "$OUT" [MINUTES [CHECKPOINT [RANK]]]   (as soon as the parts
#        carried hold the whole dataset, which comes first: call 2 with 20-MiB parts) flexify CHECKPOINT (default: the embedded default's base) for MINUTES
#        (default 9) at batch 512 with LoRA rank RANK (default 64: the embedded default's first pass; its second pass went on from that with INIT=FLEX LR=5e-4
#        BUDGETS=0.4,0.75, benchmarks/results/default_model/README.md)
#        -> /tmp/flexidit-next/flex.safetensors (also returned in $OUT, with the log); INIT=FLEX goes on from
#        an earlier result (e.g. INIT=/tmp/flexidit-next/flex.safetensors in the next call: a longer flexify),
#        LR sets its peak lr, BUDGETS=LO,HI the budgets whose patch-4 timesteps it distils (default 0.3,0.75),
#        VAR_WEIGHT the learned-variance half's weight in the loss (default 1)
#   bash benchmarks/quality_gpu.sh eval "$OUT" [eval_gpu.py options]          benchmarks/eval_gpu.py on every GPU
#        (torchrun) on /tmp/flexidit-next/flex.safetensors if a flexify call made it, else the embedded default
# The machine's /tmp survives between calls only while it stays warm (about 30 s after a call returns).
set -uo pipefail
stage=${1:?usage: quality_gpu.sh part|flexify|eval OUT_DIR [...]}
out=${2:?usage: quality_gpu.sh part|flexify|eval OUT_DIR [...]}
shift 2
mkdir -p "$out" /tmp/carry /tmp/flexidit-next
export PYTHONUNBUFFERED=1
for part in .carry/part*/*; do cp "$part" /tmp/carry/; done
if [ -f /tmp/carry/all.sha256 ] && [ ! -d /tmp/carry/x ]; then
  bash benchmarks/carry_parts.sh --unpack || exit 1
fi
data=/tmp/carry/x/fashion-mnist
if [ ! -d "$data" ] && [ "$stage" = flexify ]; then
  # Flexify needs only the dataset, which the parts hold first: take it out of the parts there are
  # (tar stops at the cut file after it) and check it against its own SHA256SUMS.
  data=/tmp/carry/early/fashion-mnist
  mkdir -p /tmp/carry/early
  cat /tmp/carry/chunk_* | tar -x -C /tmp/carry/early fashion-mnist 2>/dev/null
  (cd "$data" 2>/dev/null && sha256sum -c --quiet SHA256SUMS) || { echo "the dataset is not whole in the parts carried so far" >&2; exit 1; }
fi
case "$stage" in
  part) ls /tmp/carry ;;
  flexify)
    minutes=${1:-9}
    checkpoint=${2:-benchmarks/results/default_model/continue-2026-12-03/base.safetensors}
    rank=${3:-64}
    more=()  # INIT=FLEX: go on from an earlier flexify of the same base (flexify --init); LR: its peak lr
    if [ -n "${INIT:-}" ]; then
      # A copy under its own name (the checkpoint records it): the output may overwrite INIT.
      mkdir -p /tmp/flexidit-next/init && cp "$INIT" /tmp/flexidit-next/init/ || exit 1
      more+=(--init "/tmp/flexidit-next/init/$(basename "$INIT")")
    fi
    [ -n "${LR:-}" ] && more+=(--lr "$LR")
    [ -n "${BUDGETS:-}" ] && more+=(--budgets "$BUDGETS")  # LO,HI: distil where those budgets run patch 4
    [ -n "${VAR_WEIGHT:-}" ] && more+=(--var-weight "$VAR_WEIGHT")  # the learned-variance half's loss weight
    python3 -m flexidit_trt flexify --checkpoint "$checkpoint" --patch-sizes 2,4 --lora-rank "$rank" "${more[@]}" --minutes "$minutes" \
      --steps 100000 --batch-size 512 --half --data "$data" --out /tmp/flexidit-next/flex.safetensors 2>&1 |
      tee "$out/flexify.log" | grep -v "step/s"
    cp /tmp/flexidit-next/flex.safetensors "$out/"
    ;;
  eval)
    [ -d "$data" ] || { echo "the parts are not all here yet: carry the rest first" >&2; exit 1; }
    python3 -m pip install --no-build-isolation --no-deps -e . >"$out/install.log" 2>&1 || { tail -30 "$out/install.log"; exit 1; }
    checkpoint=()
    [ -f /tmp/flexidit-next/flex.safetensors ] && checkpoint=(--checkpoint /tmp/flexidit-next/flex.safetensors)
    gpus=$(nvidia-smi --list-gpus | wc -l)
    torchrun --standalone --nproc-per-node "$gpus" benchmarks/eval_gpu.py "$out" "${checkpoint[@]}" \
      --inception /tmp/carry/x/default_1.pt --data "$data" "$@" 2>&1 | grep -v "chunk/s" | tail -60
    ;;
  *) echo "unknown stage $stage (part, flexify or eval)" >&2; exit 2 ;;
esac
