#!/usr/bin/env bash
# Single-node benchmark: herd side by side with etcd 3.4 and the ceiling (a bare hyper + rustls
# server answering from memory, tests/src/bin/ceiling.rs), all over keep-alive HTTPS on loopback,
# all driven by the same wrk settings. Then herd's memory per key and restart time with N keys.
#
# Usage: bash tests/bench/single-node.sh [options]
#   --duration D      length of each measured wrk run (wrk syntax: 10s, 1m; default 10s)
#   --warmup D        warm-up before each measured run, same settings (default 2s)
#   --keys N          keys loaded for the memory and restart measurement (default 1000000)
#   --bench-keys N    distinct keys the PUT/GET runs cycle over (default 10000)
#   --rounds N        paired rounds after the per-server runs (default 3; 0: none): herd and the
#                     ceiling run side by side and take turns at PUT and GET with 64 connections,
#                     the first to go alternating by round, so a drift in the machine's speed
#                     weighs on both; the ceiling targets are judged on the median round's ratio
#   --quick           smoke check: 2s runs, 1s warm-up, 20000 keys, 2000 bench keys, 1 round
#   --out FILE        also write the markdown report to FILE
#   --servers LIST    comma-separated subset of herd,etcd,ceiling (default all three)
#   --no-memory       skip the memory and restart measurement
#   --no-build        use the binaries already in target/release
#   --herd-bin PATH   herd binary (default target/release/herd; for testing this script)
#   --ceiling-bin PATH  ceiling binary (default target/release/ceiling)
#   --tmp-dir DIR     where the servers' data dirs go (default $TMPDIR or /tmp); fsync cost
#                     depends on the file system, so the report names it
#   --keep-tmp        keep the temp dir (data dirs, server logs, raw wrk output) for inspection
#
# Prints progress to stderr and the report (markdown) to stdout. Exit status: 0 when every run
# completed without errors, 3 when some run had non-2xx or socket errors (they are flagged in the
# report), 1 on a setup failure (with the failing server's log tail).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/../.." && pwd)"
ORIG_ARGS="$*"

DURATION=10s
WARMUP=2s
KEYS=1000000
BENCH_KEYS=10000
ROUNDS=3
VALUE_BYTES=256      # JSON text of each PUT value (a JSON string, quotes included)
MEM_VALUE_BYTES=16   # JSON text of each value in the memory test: small, so overhead dominates
BATCH=2000           # ops per /v1/batch request when loading the memory test's keys
LOAD_CONNS=4         # parallel loader connections (memory test)
PREFILL_CONNS=16     # parallel connections for the GET prefill
WRK_TIMEOUT=10s      # a request slower than this counts as a timeout error
OUT=""
SERVERS="herd,etcd,ceiling"
MEMORY=1
BUILD=1
HERD_BIN="$REPO/target/release/herd"
CEILING_BIN="$REPO/target/release/ceiling"
TMP_PARENT="${TMPDIR:-/tmp}"
KEEP_TMP=0
quick=0; set_duration=0; set_warmup=0; set_keys=0; set_bench_keys=0; set_rounds=0

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

die() { echo "error: $*" >&2; exit 1; }
log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

need_value() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --duration) need_value "$@"; DURATION=$2; set_duration=1; shift 2 ;;
    --warmup) need_value "$@"; WARMUP=$2; set_warmup=1; shift 2 ;;
    --keys) need_value "$@"; KEYS=$2; set_keys=1; shift 2 ;;
    --bench-keys) need_value "$@"; BENCH_KEYS=$2; set_bench_keys=1; shift 2 ;;
    --rounds) need_value "$@"; ROUNDS=$2; set_rounds=1; shift 2 ;;
    --quick) quick=1; shift ;;
    --out) need_value "$@"; OUT=$2; shift 2 ;;
    --servers) need_value "$@"; SERVERS=$2; shift 2 ;;
    --no-memory) MEMORY=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --herd-bin) need_value "$@"; HERD_BIN=$2; shift 2 ;;
    --ceiling-bin) need_value "$@"; CEILING_BIN=$2; shift 2 ;;
    --tmp-dir) need_value "$@"; TMP_PARENT=$2; shift 2 ;;
    --keep-tmp) KEEP_TMP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
if [[ $quick == 1 ]]; then
  [[ $set_duration == 1 ]] || DURATION=2s
  [[ $set_warmup == 1 ]] || WARMUP=1s
  [[ $set_keys == 1 ]] || KEYS=20000
  [[ $set_bench_keys == 1 ]] || BENCH_KEYS=2000
  [[ $set_rounds == 1 ]] || ROUNDS=1
fi
[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || die "--duration must look like 10s or 1m, got '$DURATION'"
[[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "--warmup must look like 2s, got '$WARMUP'"
[[ $KEYS =~ ^[1-9][0-9]*$ ]] || die "--keys must be a positive integer, got '$KEYS'"
[[ $BENCH_KEYS =~ ^[1-9][0-9]*$ ]] || die "--bench-keys must be a positive integer: '$BENCH_KEYS'"
[[ $ROUNDS =~ ^[0-9]+$ ]] || die "--rounds must be a non-negative integer, got '$ROUNDS'"
(( KEYS <= 9999999 )) || die "--keys must be at most 9999999 (paths are /m/k<7 digits>)"
declare -A RUN_SERVER=()
IFS=',' read -r -a _servers <<<"$SERVERS"
for s in "${_servers[@]}"; do
  case $s in
    herd|etcd|ceiling) RUN_SERVER[$s]=1 ;;
    *) die "--servers: unknown server '$s' (expected herd, etcd or ceiling)" ;;
  esac
done
[[ ${#RUN_SERVER[@]} -gt 0 ]] || die "--servers is empty"
if [[ -n $OUT ]]; then
  [[ -d $(dirname -- "$OUT") ]] || die "--out: directory $(dirname -- "$OUT") does not exist"
  [[ $OUT = /* ]] || OUT="$PWD/$OUT"
fi

# ---------------------------------------------------------------------------------------------
# Processes and temp files: everything started is recorded and stopped on exit, whatever the cause.

PIDS=()          # servers started by this script (stopped by cleanup)
PID_FILES=()     # pid files of servers spawned by spawn_wait.py (stopped by cleanup)
CHILD=""         # the load tool or loader running now (see run_child)
CURRENT_LOG=""   # log of the server being measured: its tail is printed if the script fails
TMP_ROOT=""

stop_pid() {  # pid: SIGTERM, up to 5 s to exit, then SIGKILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

forget_pid() {  # pid: no longer ours to stop
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  # On a failure (not an interruption) the server's last words usually say what went wrong.
  if [[ $rc != @(0|3|130|143) && -n $CURRENT_LOG && -s $CURRENT_LOG ]]; then
    echo "--- last lines of $(basename "$CURRENT_LOG") ---" >&2
    tail -n 30 "$CURRENT_LOG" >&2
    echo "---" >&2
  fi
  if [[ -n $CHILD ]]; then stop_pid "$CHILD"; fi
  for f in "${PID_FILES[@]}"; do
    if [[ -s $f ]]; then PIDS+=("$(<"$f")"); fi
  done
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [[ -n $TMP_ROOT && -d $TMP_ROOT ]]; then
    if [[ $KEEP_TMP == 1 ]]; then
      echo "kept $TMP_ROOT" >&2
    else
      rm -rf -- "$TMP_ROOT"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

# run_child OUT ERR COMMAND...: runs COMMAND in the background, stdout to OUT and stderr to ERR
# (ERR "": this script's stderr; ERR = OUT: both in one file), and waits for it. Waiting with
# `wait` lets a Ctrl-C or SIGTERM reach the traps at once, and cleanup knows the child to stop. The
# redirections are made here, not on the call, so the traps' own messages are not redirected too.
run_child() {
  local out=$1 err=$2
  shift 2
  if [[ $err == "$out" ]]; then
    "$@" >"$out" 2>&1 &
  elif [[ -n $err ]]; then
    "$@" >"$out" 2>"$err" &
  else
    "$@" >"$out" &
  fi
  CHILD=$!
  local rc=0
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# wait_for DESCRIPTION SECONDS PID COMMAND...: polls COMMAND every 50 ms until it succeeds; fails if
# PID (when not empty) exits first or SECONDS pass.
wait_for() {
  local desc=$1 secs=$2 pid=$3
  shift 3
  local deadline=$(( $(now_ms) + secs * 1000 ))
  while true; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
      local status=0
      wait "$pid" 2>/dev/null || status=$?
      die "$desc: the server (pid $pid) exited with status $status before it was ready"
    fi
    (( $(now_ms) < deadline )) || die "$desc: not ready after ${secs}s"
    sleep 0.05
  done
}

free_ports() {  # N: prints N distinct free loopback TCP ports
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

json_field() {  # FILE FIELD: prints FIELD of the JSON object in FILE
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

http_code_is() {  # EXPECTED CURL_ARGS...: true if curl's status code equals EXPECTED
  local want=$1 got
  shift
  got=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 2 "$@" 2>/dev/null) || true
  [[ $got == "$want" ]]
}

# ---------------------------------------------------------------------------------------------
# Tools and build

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ $EUID -ne 0 ]]; then
    die "missing ${missing[*]}; hint: sudo apt-get install -y wrk etcd-server etcd-client"
  fi
  log "installing ${missing[*]} with apt-get"
  apt-get update -qq >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
fi
for tool in python3 curl wrk etcd; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done

if [[ $BUILD == 1 ]]; then
  command -v cargo >/dev/null || die "cargo is not installed (or pass --no-build)"
  log "building herd and ceiling (release)"
  (cd "$REPO" && cargo build --release -p node --bin herd -p tests --bin ceiling) \
    || die "cargo build --release -p node --bin herd -p tests --bin ceiling failed"
fi
HERD_FLAGS=()   # extra `herd serve` flags: --no-mdns (loopback only) where this herd has it
if [[ -n ${RUN_SERVER[herd]:-} ]]; then
  [[ -x $HERD_BIN ]] || die "herd binary $HERD_BIN not found (build it or pass --herd-bin)"
  herd_help=$("$HERD_BIN" serve --help 2>&1) || die "'$HERD_BIN serve --help' failed: $herd_help"
  if grep -q -- '--no-mdns' <<<"$herd_help"; then
    HERD_FLAGS+=(--no-mdns)
  else
    log "herd serve has no --no-mdns flag yet; starting it without"
  fi
fi
if [[ -n ${RUN_SERVER[ceiling]:-} ]]; then
  [[ -x $CEILING_BIN ]] || die "ceiling binary $CEILING_BIN not found (build or --ceiling-bin)"
fi

[[ -d $TMP_PARENT ]] || die "--tmp-dir $TMP_PARENT does not exist"
TMP_ROOT=$(mktemp -d "$TMP_PARENT/herd-bench.XXXXXX")
RESULTS="$TMP_ROOT/results.tsv"
: >"$RESULTS"

meta() { printf 'meta\t%s\t%s\n' "$1" "$2" >>"$RESULTS"; }
commit=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo "none (no commits yet)")
if [[ -n $(git -C "$REPO" status --porcelain 2>/dev/null | head -n 1) ]]; then
  commit="$commit, working tree modified"
fi
meta command "bash tests/bench/single-node.sh${ORIG_ARGS:+ $ORIG_ARGS}"
meta date "$(date -u +%Y-%m-%dT%H:%MZ)"
meta commit "$commit"
meta nproc "$(nproc)"
meta cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
meta kernel "$(uname -r)"
meta fs "$(df -T "$TMP_ROOT" | awk 'NR == 2 { print $2 " (" $1 ")" }')"
meta wrk "$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')"
meta etcd "$(etcd --version 2>/dev/null | awk '/^etcd Version/ { print $3 }')"
meta duration "$DURATION"
meta warmup "$WARMUP"
meta value_bytes "$VALUE_BYTES"
meta bench_keys "$BENCH_KEYS"
meta rounds "$ROUNDS"

# ---------------------------------------------------------------------------------------------
# Load: the same wrk settings for every server

# run_wrk SERVER KIND URL TOKEN OP CONNS [ROUND]: a warm-up, then the measured run; appends a "run"
# record (a "round" record, numbered ROUND, when ROUND is given).
run_wrk() {
  local server=$1 kind=$2 url=$3 token=$4 op=$5 conns=$6 round=${7:-}
  local threads=1 raw line
  (( conns > 1 )) && threads=2
  local args=(-t"$threads" -c"$conns" --timeout "$WRK_TIMEOUT" -s "$BENCH_DIR/kv.lua" "$url"
              -- "$kind" "$op" "${token:--}" "$BENCH_KEYS" "$VALUE_BYTES")
  raw="$TMP_ROOT/wrk-$server-$op-c$conns${round:+-round$round}.txt"
  if [[ $WARMUP != 0 && $WARMUP != 0s ]]; then
    run_child "$raw.warmup" "$raw.warmup" wrk -d"$WARMUP" "${args[@]}" \
      || { cat "$raw.warmup" >&2; die "wrk warm-up against $server failed"; }
  fi
  run_child "$raw" "$raw" wrk -d"$DURATION" --latency "${args[@]}" \
    || { cat "$raw" >&2; die "wrk against $server ($op, $conns connections) failed"; }
  line=$(grep '^BENCH ' "$raw" | tail -n 1) \
    || { cat "$raw" >&2; die "no BENCH line in the wrk output"; }
  # BENCH requests=.. duration_us=.. p50_us=.. p99_us=.. max_us=.. err_connect=.. err_read=..
  #       err_write=.. err_status=.. err_timeout=..
  local -A v=()
  local kv
  for kv in ${line#BENCH }; do v[${kv%%=*}]=${kv#*=}; done
  local record=run
  [[ -n $round ]] && record="round"$'\t'"$round"
  printf '%s\t%s\t%s-c%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$record" "$server" "$op" "$conns" \
    "${v[requests]}" "${v[duration_us]}" "${v[p50_us]}" "${v[p99_us]}" \
    "${v[err_connect]}" "${v[err_read]}" "${v[err_write]}" "${v[err_status]}" "${v[err_timeout]}" \
    >>"$RESULTS"
  local errors=$(( v[err_connect] + v[err_read] + v[err_write] + v[err_status] + v[err_timeout] ))
  local summary
  summary=$(awk -v n="${v[requests]}" -v d="${v[duration_us]}" -v p50="${v[p50_us]}" \
    -v p99="${v[p99_us]}" -v s="$server" -v op="${op^^}" -v c="$conns" -v r="$round" 'BEGIN {
      printf "%-7s %-3s c=%-2d %8.0f req/s  p50 %7.2f ms  p99 %7.2f ms%s", s, op, c, n / (d / 1e6),
        p50 / 1000, p99 / 1000, r == "" ? "" : "  (round " r ")" }')
  if (( errors > 0 )); then
    summary+="  ERRORS: connect ${v[err_connect]}, read ${v[err_read]}, write ${v[err_write]},"
    summary+=" non-2xx ${v[err_status]}, timeout ${v[err_timeout]}"
  fi
  log "$summary"
}

# prefill SERVER KIND URL TOKEN [CACERT]: writes the keys the GET runs read.
prefill() {
  local server=$1 kind=$2 url=$3 token=$4 cacert=${5:-}
  local auth=()
  if [[ -n $cacert ]]; then auth+=(--cacert "$cacert"); fi
  if [[ -n $token ]]; then auth+=(--token "$token"); fi
  log "$server: prefilling $BENCH_KEYS keys for the GET runs"
  run_child /dev/null "" python3 "$BENCH_DIR/load_keys.py" prefill --url "$url" --kind "$kind" \
    "${auth[@]}" --keys "$BENCH_KEYS" --value-bytes "$VALUE_BYTES" --conns "$PREFILL_CONNS" \
    || die "$server: prefill failed"
}

# run_workloads SERVER KIND URL TOKEN [CACERT]: prefill the keys, then PUT and GET at 1 and 64.
run_workloads() {
  local server=$1 kind=$2 url=$3 token=$4
  prefill "$@"
  run_wrk "$server" "$kind" "$url" "$token" put 1
  run_wrk "$server" "$kind" "$url" "$token" put 64
  run_wrk "$server" "$kind" "$url" "$token" get 1
  run_wrk "$server" "$kind" "$url" "$token" get 64
}

# check_kv NAME URL TOKEN CURL_ARGS...: one PUT then GET through /v1/kv answers 200 with the value.
check_kv() {
  local name=$1 url=$2 token=$3
  shift 3
  local code body
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$@" -X PUT \
    -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    --data-binary '"sanity"' "$url/v1/kv/bench/sanity") \
    || die "$name: PUT /v1/kv/bench/sanity failed"
  [[ $code == 200 ]] || die "$name: PUT /v1/kv/bench/sanity answered $code, expected 200"
  body=$(curl -sS --max-time 5 "$@" -H "Authorization: Bearer $token" "$url/v1/kv/bench/sanity") \
    || die "$name: GET /v1/kv/bench/sanity failed"
  [[ $(tr -d '[:space:]' <<<"$body") == '"sanity"' ]] \
    || die "$name: GET /v1/kv/bench/sanity answered '$body', expected \"sanity\""
}

# start_herd DIR: starts a fresh herd on a free port (data in DIR/data, log DIR/herd.log), waits
# for its token, CA and /v1/health; sets HERD_PID, HERD_PORT, HERD_URL, HERD_TOKEN (the bootstrap
# admin token) and HERD_CA.
start_herd() {
  mkdir -p "$1"
  local dir="$1/data" logf="$1/herd.log" port
  port=$(free_ports 1)
  log "herd: starting on https://127.0.0.1:$port ($(basename "$1"))"
  CURRENT_LOG=$logf
  "$HERD_BIN" serve --data-dir "$dir" --api-addr "127.0.0.1:$port" "${HERD_FLAGS[@]}" \
    >"$logf" 2>&1 &
  HERD_PID=$!
  PIDS+=("$HERD_PID")
  wait_for "herd: $dir/admin.token and $dir/tls/ca.crt" 60 "$HERD_PID" \
    test -s "$dir/admin.token" -a -s "$dir/tls/ca.crt"
  wait_for "herd: GET https://127.0.0.1:$port/v1/health" 60 "$HERD_PID" \
    http_code_is 200 --cacert "$dir/tls/ca.crt" "https://127.0.0.1:$port/v1/health"
  HERD_PORT=$port HERD_URL="https://127.0.0.1:$port" HERD_CA="$dir/tls/ca.crt"
  HERD_TOKEN=$(head -n 1 "$dir/admin.token" | tr -d '[:space:]')
  [[ -n $HERD_TOKEN ]] || die "herd: $dir/admin.token is empty"
}

bench_herd() {
  local dir="$TMP_ROOT/herd"
  start_herd "$dir"
  check_kv herd "$HERD_URL" "$HERD_TOKEN" --cacert "$HERD_CA"
  run_workloads herd herd "$HERD_URL" "$HERD_TOKEN" "$HERD_CA"
  stop_pid "$HERD_PID"; forget_pid "$HERD_PID"
  rm -rf -- "$dir/data"; sync
}

bench_etcd() {
  local dir="$TMP_ROOT/etcd" cport pport pid
  mkdir -p "$dir"
  read -r cport pport <<<"$(free_ports 2)"
  log "etcd: starting on https://127.0.0.1:$cport (peer http://127.0.0.1:$pport)"
  CURRENT_LOG="$dir/etcd.log"
  # One member; fsync stays on (etcd's default): every acknowledged PUT is durable, as in herd.
  etcd --name bench --data-dir "$dir/data" \
    --listen-client-urls "https://127.0.0.1:$cport" \
    --advertise-client-urls "https://127.0.0.1:$cport" --auto-tls \
    --listen-peer-urls "http://127.0.0.1:$pport" \
    --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "bench=http://127.0.0.1:$pport" --initial-cluster-state new \
    --logger zap --log-outputs stderr >"$CURRENT_LOG" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  local url="https://127.0.0.1:$cport"
  wait_for "etcd: GET $url/health" 60 "$pid" http_code_is 200 -k "$url/health"
  run_workloads etcd etcd "$url" ""
  # A prefilled key reads back through the gateway (the GET runs would not notice an empty answer).
  local range
  range=$(curl -sS -k --max-time 5 -X POST "$url/v3/kv/range" \
    -d "{\"key\":\"$(printf 'bench/k0' | base64)\"}") || die "etcd: range request failed"
  [[ $range == *'"count":"1"'* ]] || die "etcd: bench/k0 does not read back: $range"
  stop_pid "$pid"; forget_pid "$pid"
  rm -rf -- "$dir/data"; sync
}

# start_ceiling DIR: starts the ceiling, waits until it answers; sets CEILING_PID and CEILING_URL.
start_ceiling() {
  local dir=$1 pid url
  mkdir -p "$dir"
  log "ceiling: starting"
  CURRENT_LOG="$dir/ceiling.log"
  "$CEILING_BIN" --addr 127.0.0.1:0 --token bench >"$dir/stdout" 2>"$CURRENT_LOG" &
  pid=$!
  PIDS+=("$pid")
  wait_for "ceiling: 'listening on https://...' on stdout" 60 "$pid" \
    grep -qm1 '^listening on https://127\.0\.0\.1:[0-9]\+' "$dir/stdout"
  url=$(grep -om1 'https://127\.0\.0\.1:[0-9]\+' "$dir/stdout")
  log "ceiling: listening on $url"
  wait_for "ceiling: PUT $url/v1/kv/bench/ready" 30 "$pid" http_code_is 200 -k -X PUT \
    -H 'Authorization: Bearer bench' --data-binary '"ready"' "$url/v1/kv/bench/ready"
  check_kv ceiling "$url" bench -k
  CEILING_PID=$pid CEILING_URL=$url
}

bench_ceiling() {
  start_ceiling "$TMP_ROOT/ceiling"
  run_workloads ceiling ceiling "$CEILING_URL" bench
  stop_pid "$CEILING_PID"; forget_pid "$CEILING_PID"
}

# Paired rounds: a fresh herd and a fresh ceiling run side by side (the one not measured is idle)
# and take turns at PUT and GET with 64 connections. Odd rounds measure herd first, even rounds
# the ceiling first, so a slow spell of the machine falls on both in turn.
bench_rounds() {
  local dir="$TMP_ROOT/herd-rounds" r op s first second
  log "rounds: $ROUNDS paired rounds of herd and the ceiling at 64 connections"
  start_herd "$dir"
  check_kv herd "$HERD_URL" "$HERD_TOKEN" --cacert "$HERD_CA"
  prefill herd herd "$HERD_URL" "$HERD_TOKEN" "$HERD_CA"
  start_ceiling "$TMP_ROOT/ceiling-rounds"
  prefill ceiling ceiling "$CEILING_URL" bench
  for ((r = 1; r <= ROUNDS; r++)); do
    if (( r % 2 == 1 )); then first=herd second=ceiling; else first=ceiling second=herd; fi
    for op in put get; do
      for s in "$first" "$second"; do
        if [[ $s == herd ]]; then
          CURRENT_LOG="$dir/herd.log"
          run_wrk herd herd "$HERD_URL" "$HERD_TOKEN" "$op" 64 "$r"
        else
          CURRENT_LOG="$TMP_ROOT/ceiling-rounds/ceiling.log"
          run_wrk ceiling ceiling "$CEILING_URL" bench "$op" 64 "$r"
        fi
      done
    done
  done
  stop_pid "$HERD_PID"; forget_pid "$HERD_PID"
  stop_pid "$CEILING_PID"; forget_pid "$CEILING_PID"
  rm -rf -- "$dir/data"; sync
}

# Memory and restart: a fresh herd, RSS empty, load KEYS keys through /v1/batch, RSS loaded;
# SIGKILL, restart on the same data dir, time from spawn to /v1/health 200, read keys back.
bench_herd_memory() {
  local dir="$TMP_ROOT/herd-mem"
  start_herd "$dir"
  local port=$HERD_PORT url=$HERD_URL ca=$HERD_CA
  local keys_args=(--url "$url" --kind herd --cacert "$ca" --token "$HERD_TOKEN" --keys "$KEYS"
                   --value-bytes "$MEM_VALUE_BYTES")
  sleep 0.5   # let start-up allocations settle before the empty-store reading
  local rss0 rss1 rss2
  rss0=$(rss_kb "$HERD_PID")
  log "herd memory: RSS empty $rss0 kB; loading $KEYS keys through /v1/batch ($BATCH per request)"
  run_child "$dir/loaded.json" "" python3 "$BENCH_DIR/load_keys.py" batch "${keys_args[@]}" \
    --batch "$BATCH" --conns "$LOAD_CONNS" || die "herd memory: loading $KEYS keys failed"
  rss1=$(rss_kb "$HERD_PID")
  local key_bytes value_bytes load_s
  key_bytes=$(json_field "$dir/loaded.json" key_bytes)
  value_bytes=$(json_field "$dir/loaded.json" value_bytes)
  load_s=$(json_field "$dir/loaded.json" seconds)
  log "herd memory: loaded in ${load_s}s; RSS loaded $rss1 kB"
  printf 'mem\t%s\t%s\t%s\t%s\t%s\t%s\n' "$KEYS" "$key_bytes" "$value_bytes" "$rss0" "$rss1" \
    "$load_s" >>"$RESULTS"

  log "herd memory: SIGKILL and restart on the same data dir"
  kill -KILL "$HERD_PID"
  wait "$HERD_PID" 2>/dev/null || true
  forget_pid "$HERD_PID"
  local ready_ms pid_file="$dir/herd2.pid" rc=0
  PID_FILES+=("$pid_file")
  CURRENT_LOG="$dir/herd2.log"
  run_child "$dir/spawned.json" "" python3 "$BENCH_DIR/spawn_wait.py" --health "$url/v1/health" \
    --cacert "$ca" --pid-file "$pid_file" --log "$dir/herd2.log" --deadline 120 -- \
    "$HERD_BIN" serve --data-dir "$dir/data" --api-addr "127.0.0.1:$port" "${HERD_FLAGS[@]}" \
    || rc=$?
  [[ -s $pid_file ]] || die "herd memory: restart failed: spawn_wait.py wrote no pid"
  HERD_PID=$(<"$pid_file")
  PIDS+=("$HERD_PID")
  PID_FILES=()
  [[ $rc == 0 ]] || die "herd memory: restart failed"
  ready_ms=$(json_field "$dir/spawned.json" ready_ms)
  rss2=$(rss_kb "$HERD_PID")
  local readback=ok
  python3 "$BENCH_DIR/load_keys.py" readback "${keys_args[@]}" >/dev/null || readback=failed
  log "herd memory: ready $ready_ms ms after spawn; read-back $readback; RSS $rss2 kB"
  printf 'restart\t%s\t%s\t%s\n' "$ready_ms" "$rss2" "$readback" >>"$RESULTS"
  stop_pid "$HERD_PID"; forget_pid "$HERD_PID"
  rm -rf -- "$dir/data"; sync
}

# ---------------------------------------------------------------------------------------------

log "runs of $DURATION after $WARMUP warm-up over $BENCH_KEYS keys; $KEYS keys for memory/restart"
log "temp dir $TMP_ROOT"
[[ -n ${RUN_SERVER[herd]:-} ]] && bench_herd
[[ -n ${RUN_SERVER[etcd]:-} ]] && bench_etcd
[[ -n ${RUN_SERVER[ceiling]:-} ]] && bench_ceiling
if [[ -n ${RUN_SERVER[herd]:-} && -n ${RUN_SERVER[ceiling]:-} ]] && (( ROUNDS > 0 )); then
  bench_rounds
fi
if [[ -n ${RUN_SERVER[herd]:-} && $MEMORY == 1 ]]; then bench_herd_memory; fi
CURRENT_LOG=""

report_rc=0
python3 "$BENCH_DIR/report.py" "$RESULTS" >"$TMP_ROOT/report.md" || report_rc=$?
[[ $report_rc == 0 || $report_rc == 3 ]] || die "report.py failed"
cat "$TMP_ROOT/report.md"
if [[ -n $OUT ]]; then
  cp "$TMP_ROOT/report.md" "$OUT"
  log "report written to $OUT"
fi
[[ $report_rc == 3 ]] && log "some runs had errors: their figures are flagged in the report"
exit "$report_rc"
