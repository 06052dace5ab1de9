#!/usr/bin/env bash
# The file view benchmark: small-key reads through the mount (cached and just-invalidated)
# against the same loop on tmpfs, writes through the mount against REST writes, and `ls` of a
# directory with 10,000 keys; for a writable mount (`serve --mount`) and a read-only one
# (`serve --mount --mount-read-only`). Needs root and /dev/fuse.
#
#   bash tests/bench/mount.sh [--quick] [--out FILE] [--no-build]
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
[[ $(id -u) == 0 ]] || { echo "error: the mount benchmark needs root (FUSE, tmpfs)" >&2; exit 1; }
[[ -e /dev/fuse ]] || { echo "error: /dev/fuse is missing" >&2; exit 1; }
command -v cc >/dev/null || { echo "error: no C compiler; hint: apt-get install gcc" >&2; exit 1; }
if [[ $BUILD == 1 ]]; then
  echo "==> building herd (release)" >&2
  (cd "$REPO" && cargo build --release -p node --bin herd) >&2
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cc -O2 -o "$WORK/readloop" "$REPO/tests/bench/readloop.c"
python3 "$REPO/tests/bench/mount_bench.py" --herd-bin "$REPO/target/release/herd" \
  --readloop "$WORK/readloop" --commit "$(git -C "$REPO" rev-parse --short=12 HEAD)" \
  --command "bash tests/bench/mount.sh${ARGS[*]:+ ${ARGS[*]}}" "${ARGS[@]}"
