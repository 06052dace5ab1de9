#!/usr/bin/env bash
# Builds the normalize plugin (world `transform`): bash plugins/normalize/build.sh OUTDIR -> OUTDIR/normalize.wasm
# Needs componentize-py (pip install componentize-py); skips the build when nothing changed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -ne 1 ]; then
    echo "usage: bash plugins/normalize/build.sh OUTDIR" >&2
    exit 2
fi
exec bash "$here/../componentize-py.sh" "$here" transform "$1"
