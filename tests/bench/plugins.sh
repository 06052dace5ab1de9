#!/usr/bin/env bash
# The plugin benchmark: write latency and throughput with no plugin, the C validator and the
# Python validator; derive latency; restart time with the Python plugin installed.
#
#   bash tests/bench/plugins.sh [--out FILE] [--no-build] [--writes N] [--duration D]
#
# Prints the markdown report to stdout (and to FILE with --out); progress goes to stderr.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=1
ARGS=()
while (($#)); do
  case $1 in
    --no-build) BUILD=0; shift ;;
    --out|--writes|--duration) ARGS+=("$1" "$2"); shift 2 ;;
    -h|--help) sed -n '2,7p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "error: wrk is missing; hint: apt-get install -y wrk" >&2; exit 1; }
if [[ $BUILD == 1 ]]; then
  echo "==> building herd (release) and the plugins" >&2
  (cd "$REPO" && cargo build --release -p node --bin herd) >&2
  bash "$REPO/plugins/build.sh" >&2
fi
python3 "$REPO/tests/bench/plugins_bench.py" --herd-bin "$REPO/target/release/herd" \
  --plugins "$REPO/target/plugins" --lua "$REPO/tests/bench/kv.lua" \
  --commit "$(git -C "$REPO" rev-parse --short=12 HEAD)" \
  --command "bash tests/bench/plugins.sh${ARGS[*]:+ ${ARGS[*]}}" "${ARGS[@]}"
