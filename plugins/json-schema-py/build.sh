#!/usr/bin/env bash
# Builds the json-schema-py plugin (world `validate`): bash plugins/json-schema-py/build.sh OUTDIR -> OUTDIR/json-schema-py.wasm
# Needs componentize-py (pip install componentize-py); skips the build when nothing changed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -ne 1 ]; then
    echo "usage: bash plugins/json-schema-py/build.sh OUTDIR" >&2
    exit 2
fi
exec bash "$here/../componentize-py.sh" "$here" validate "$1"
