#!/usr/bin/env bash
# Scale benchmark: as many herd nodes as fit on this machine (default 32) in network namespaces
# on one bridge, mDNS only, no seeds (tests/bench/scale_bench.py): time until all know each
# other, write on one -> visible on all (p50, p99), idle traffic and CPU per node, and repair
# after half the nodes were split off for a minute. Needs root and iproute2; about 4 minutes.
#
#   bash tests/bench/scale.sh [--nodes N] [--no-build] [--idle-secs S] [--split-secs S] [--writes N]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=1
ARGS=()
while (($#)); do
  case $1 in
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [[ $BUILD == 1 ]]; then
  echo "==> building herd (release)" >&2
  (cd "$REPO" && cargo build --release -p node --bin herd) >&2
fi
exec python3 "$REPO/tests/bench/scale_bench.py" --command "bash tests/bench/scale.sh ${ARGS[*]:-}" "${ARGS[@]}"
