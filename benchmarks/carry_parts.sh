#!/usr/bin/env bash
# Pack files and folders for the device machine, whose calls carry at most 64 MiB (working tree included)
# and which has no network: one tar of everything named, split into parts .carry/part1, .carry/part2, ...
# (git-ignored), one part per device call, carried back to back while the machine stays warm.
#
# Usage (repo root, here):   bash benchmarks/carry_parts.sh PART_MiB PATH...
# On the device, call k carries .carry/partk and starts with
#   mkdir -p /tmp/carry && cp .carry/part*/chunk_* /tmp/carry/
# and the last call unpacks everything under /tmp/carry/x, checking the tar's sha256 first:
#   bash benchmarks/carry_parts.sh --unpack
# CARRY_TMP (default /tmp/carry) names that folder, so that two sets of parts can be carried in turn.
set -euo pipefail
tmp=${CARRY_TMP:-/tmp/carry}
if [ "${1:-}" = "--unpack" ]; then
  mkdir -p "$tmp/x"
  cat "$tmp"/chunk_* >"$tmp/all.tar"
  (cd "$tmp" && sha256sum -c --quiet all.sha256) || { echo "carried parts do not add up" >&2; exit 1; }
  tar -xf "$tmp/all.tar" -C "$tmp/x"
  rm "$tmp/all.tar"
  echo "unpacked under $tmp/x: $(ls "$tmp/x" | tr '\n' ' ')"
  exit 0
fi
part_mib=${1:?usage: carry_parts.sh PART_MiB PATH... | --unpack}
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -cf "$work/all.tar" "$@"
(cd "$work" && sha256sum all.tar >all.sha256 && split -b "${part_mib}M" all.tar chunk_ && rm all.tar)
rm -rf .carry/part[0-9]*
k=0
for chunk in "$work"/chunk_*; do
  k=$((k + 1))
  mkdir -p ".carry/part$k"
  mv "$chunk" ".carry/part$k/"
done
cp "$work/all.sha256" ".carry/part$k/"
du -sh .carry/part[0-9]* | sed 's/^/carry: /'
echo "$k parts: carry .carry/part1 .. .carry/part$k in $k calls back to back; the last unpacks (--unpack)"
