#!/usr/bin/env bash
# Where a durable PUT's CPU goes, by thread: starts `herd serve` on a fresh data dir on loopback,
# drives it with wrk (durable PUTs of 256-byte values over 10,000 keys, 64 keep-alive HTTPS
# connections, the single-node benchmark's kv.lua), and prints the throughput, the node's CPU
# per PUT, the mean group commit size, and for each thread its user and system CPU and how often
# it slept and was preempted (voluntary and involuntary context switches), per committed write
# (from /proc/PID/task/*/stat and status, counted from the node's start, so the warm-up is
# included).
#
# Usage: bash tests/bench/put-threads.sh [--herd-bin PATH] [--seconds N] [--runs N]
#   --herd-bin PATH  herd binary (default target/release/herd; build it with
#                    `cargo build --release -p node --bin herd`)
#   --seconds N      measured seconds per run (default 10), after a 2 s warm-up
#   --runs N         how many runs, one after another (default 1)
# Compare two binaries by alternating them: their figures move with the machine's state.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERD_BIN="$REPO/target/release/herd"
SECS=10
RUNS=1
while (($#)); do
  case $1 in
    --herd-bin) HERD_BIN=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) echo "put-threads.sh: unknown argument $1 (see the header for usage)" >&2; exit 2 ;;
  esac
done
[[ -x $HERD_BIN ]] || { echo "put-threads.sh: no herd binary at $HERD_BIN" >&2; exit 1; }
command -v wrk >/dev/null || { echo "put-threads.sh: wrk is missing (apt-get install wrk)" >&2; exit 1; }
TICK=$(getconf CLK_TCK)
PORT=$((20000 + RANDOM % 20000))

for ((run = 1; run <= RUNS; run++)); do
  dir=$(mktemp -d /tmp/herd-put-threads.XXXXXX)
  trap 'kill "$(cat "$dir/pid" 2>/dev/null)" 2>/dev/null; rm -rf "$dir"' EXIT
  python3 "$REPO/tests/bench/spawn_wait.py" --health "https://127.0.0.1:$PORT/v1/health" \
    --pid-file "$dir/pid" --log "$dir/log" --deadline 60 -- \
    "$HERD_BIN" serve --data-dir "$dir/data" --api-addr "127.0.0.1:$PORT" \
    --peer-addr "127.0.0.1:$((PORT + 1))" --no-mdns >/dev/null || { cat "$dir/log" >&2; exit 1; }
  pid=$(cat "$dir/pid")
  token=$(cat "$dir/data/admin.token")
  url="https://127.0.0.1:$PORT"
  args=(-t2 -c64 -s "$REPO/tests/bench/kv.lua" "$url" -- herd put "$token" 10000 256)
  wrk -d2s "${args[@]}" >/dev/null
  c0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  wrk -d"${SECS}s" --latency "${args[@]}" >"$dir/wrk.txt"
  c1=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
  line=$(grep '^BENCH ' "$dir/wrk.txt")
  requests=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")
  p99=$(sed 's/.*p99_us=\([0-9]*\).*/\1/' <<<"$line")
  metrics=$(curl -sk -H "Authorization: Bearer $token" "$url/metrics")
  writes=$(awk '/^herd_committed_writes_total/ { print $2 }' <<<"$metrics")
  commits=$(awk '/^herd_commits_total/ { print $2 }' <<<"$metrics")
  commit_secs=$(awk '/^herd_commit_seconds_total/ { print $2 }' <<<"$metrics")
  awk -v run="$run" -v n="$requests" -v secs="$SECS" -v p99="$p99" -v cpu=$((c1 - c0)) \
    -v hz="$TICK" -v w="$writes" -v c="$commits" -v cs="$commit_secs" 'BEGIN {
      printf "run %d: %.0f PUT/s, p99 %.2f ms, node CPU %.1f us per PUT, %.1f writes per commit, %.0f us per commit\n",
        run, n / secs, p99 / 1000, cpu / hz * 1e6 / n, w / c, cs / c * 1e6 }'
  for t in /proc/$pid/task/*; do
    read -r name <"$t/comm"
    switches=$(awk '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 }
      END { print v, n }' "$t/status")
    awk -v n="$name" -v w="$writes" -v hz="$TICK" -v sw="$switches" '{
      u = $14 / hz * 1e6 / w; s = $15 / hz * 1e6 / w; split(sw, c, " ")
      if (u + s >= 0.05)
        printf "  %-16s user %5.2f us  system %5.2f us  sleeps %.3f  preempted %.3f  per write\n",
          n, u, s, c[1] / w, c[2] / w }' "$t/stat"
  done
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -rf "$dir"; trap - EXIT
done
