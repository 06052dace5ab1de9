#!/usr/bin/env bash
# The loop benchmark: a write on node 1 of a three-node lab -> a program on node 3 has read the
# template-rendered file from node 3's mount, through `entr` and through
# `herd watch --exec --wait 0` (tests/lab/loop_test.py with many writes). Needs root, network
# namespaces, /dev/fuse, entr.
#
#   bash tests/bench/loop.sh [--writes N] [--no-build]
#
# Prints a markdown table (p50, p99, max per program, and entr's own delay on a local file).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=1
WRITES=300
while (($#)); do
  case $1 in
    --no-build) BUILD=0; shift ;;
    --writes) WRITES=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ $BUILD == 1 ]]; then
  echo "==> building herd (release) and the plugins" >&2
  (cd "$REPO" && cargo build --release -p node --bin herd && bash plugins/build.sh) >&2
fi
echo "Commit \`$(git -C "$REPO" rev-parse --short=12 HEAD)\`, \`bash tests/bench/loop.sh --writes $WRITES\`, $(date -u +%F)."
echo
echo "| program on node 3 | writes | p50 | p99 | max |"
echo "|---|---|---|---|---|"
HERD_TEST_STRICT=1 python3 "$REPO/tests/lab/loop_test.py" --herd "$REPO/target/release/herd" \
  --writes "$WRITES" --gap 0.15 --bench | grep '^|'
