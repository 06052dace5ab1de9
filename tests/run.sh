#!/usr/bin/env bash
# Runs herd's whole test suite, installing what the tests need on a fresh Debian machine.
#
#   bash tests/run.sh
#
# Under CI (CI=true) a test that needs a missing capability fails instead of skipping.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

# Debian packages the tests need (installed only when missing): curl for the tour checks,
# fuse3, vim and python3 for the file-view tests (real tools on a real mount).
packages=(curl ca-certificates fuse3 vim python3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "error: cargo is not installed (https://rustup.rs)" >&2
  exit 1
fi

if [ "${CI:-}" = "true" ]; then
  export HERD_TEST_STRICT=1
fi

log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "building the herd binary"
cargo build --locked -p node --bin herd
log "cargo test"
cargo test --workspace --locked
