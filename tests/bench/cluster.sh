#!/usr/bin/env bash
# Cluster benchmark: three herd nodes in network namespaces (tests/lab/lab.py; mDNS on the lab
# interface only, real lab addresses, mutual TLS between peers), measured in one run:
#   1. replication latency: PUT on node 1 -> the event on node 2's and node 3's watch streams
#      (p50/p99 over sequential writes, and at 1,000 writes/s over 8 connections); target p99
#      < 10 ms;
#   2. anti-entropy repair bytes: 100,000 keys on every node, 1% changed on node 1 while node 3
#      is cut off, healed (3 runs); anti-entropy bytes over all nodes against the differing
#      registers; target <= 3x the differing registers + 64 KiB;
#   3. convergence after a 30 s partition {1} | {2,3} with writes on both sides: heal -> equal
#      digests;
#   4. a new empty node joining: spawn -> its digest equals the others'; target < 5 s.
# Needs root (network namespaces) and iproute2. Runs in about 1-2 minutes after the build.
#
# Usage: bash tests/bench/cluster.sh [options]
#   --quick              smoke run: 20,000 keys, 300 latency writes, one repair run, a 10 s partition
#   --out FILE           also write the markdown report to FILE
#   --no-build           use target/release/herd as it is
#   --herd-bin PATH      herd binary (default target/release/herd; not rebuilt by this script)
#   --keys N             keys loaded (default 100000)
#   --lat-writes N       writes per latency run (default 2000)
#   --concurrency N      connections of the concurrent latency run (default 8; 1 skips it)
#   --conc-rate R        writes/s of the concurrent latency run, over all its connections
#                        (default 1000)
#   --repair-runs N      runs of the repair test (default 3; the target is judged on each)
#   --partition-secs S   length of the partition (default 30)
#   --write-rate R       PUT/s on each side during the partition (default 50)
#   --anti-entropy-interval DUR  passed to every node (default 2s, herd's default)
#   --deadline S         seconds to wait for convergence before giving up (default 90)
#   --tmp-dir DIR        where data dirs and node logs go (default $TMPDIR or /tmp)
#   --keep-tmp           keep them afterwards
#
# Prints progress to stderr and the report (markdown) to stdout. Exit status: 0 when every
# measurement completed (missed targets are flagged in the report), 3 when one did not complete
# (lost events, no convergence before the deadline), 1 on a setup failure (with the nodes' log
# tails). The lab is always torn down; after a SIGKILL run `python3 tests/lab/lab.py cleanup`.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/../.." && pwd)"
ORIG_ARGS="$*"
BUILD=1
HERD_BIN="$REPO/target/release/herd"
PASS=()

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 1; }
need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --no-build) BUILD=0; shift ;;
    --herd-bin) need_value "$@"; HERD_BIN=$2; shift 2 ;;
    --quick|--keep-tmp) PASS+=("$1"); shift ;;
    --out|--keys|--lat-writes|--concurrency|--conc-rate|--repair-runs|--partition-secs|--write-rate|\
    --anti-entropy-interval|--deadline|--tmp-dir)
      need_value "$@"; PASS+=("$1" "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

[[ $EUID -eq 0 ]] || die "the cluster benchmark needs root (network namespaces); run it with sudo"
for tool in python3 ip bridge; do
  command -v "$tool" >/dev/null || die "$tool is not installed (ip and bridge: apt-get install -y iproute2)"
done

if [[ $BUILD == 1 ]]; then
  command -v cargo >/dev/null || die "cargo is not installed (or pass --no-build)"
  echo "[cluster-bench $(date +%H:%M:%S)] building herd (release)" >&2
  (cd "$REPO" && cargo build --release -p node --bin herd) >&2 \
    || die "cargo build --release -p node --bin herd failed"
fi
[[ -x $HERD_BIN ]] || die "herd binary $HERD_BIN not found (build it or pass --herd-bin)"

commit=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo "none (no commits yet)")
if [[ -n $(git -C "$REPO" status --porcelain 2>/dev/null | head -n 1) ]]; then
  commit="$commit, working tree modified"
fi

# exec: the driver gets Ctrl-C and SIGTERM itself, and the lab's handlers tear everything down.
exec python3 "$BENCH_DIR/cluster_bench.py" --herd-bin "$HERD_BIN" --commit "$commit" \
  --command "bash tests/bench/cluster.sh${ORIG_ARGS:+ $ORIG_ARGS}" "${PASS[@]}"
