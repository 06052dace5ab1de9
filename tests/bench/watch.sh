#!/usr/bin/env bash
# The watch resume benchmark: a node with 10,000 events in its change log is killed (-9) or
# stopped and started again; how long until its API answers and until a watcher resuming with
# ?since= has every event after its revision (and, for reference, until a fresh watch has the
# current state).
#
#   bash tests/bench/watch.sh [--quick] [--out FILE] [--no-build]
#
# Prints the markdown report to stdout (and to FILE with --out); progress goes to stderr.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=1
ARGS=()
while (($#)); do
  case $1 in
    --no-build) BUILD=0; shift ;;
    --quick) ARGS+=(--quick); shift ;;
    --out) ARGS+=(--out "$2"); shift 2 ;;
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ $BUILD == 1 ]]; then
  echo "==> building herd (release)" >&2
  (cd "$REPO" && cargo build --release -p node --bin herd) >&2
fi
python3 "$REPO/tests/bench/watch_bench.py" --herd-bin "$REPO/target/release/herd" \
  --commit "$(git -C "$REPO" rev-parse --short=12 HEAD)" \
  --command "bash tests/bench/watch.sh${ARGS[*]:+ ${ARGS[*]}}" "${ARGS[@]}"
