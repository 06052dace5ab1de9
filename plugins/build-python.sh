#!/usr/bin/env bash
# Builds every Python plugin: bash plugins/build-python.sh OUTDIR -> OUTDIR/<plugin>.wasm each.
#
# A Python plugin is a folder here with an app.py and a build.sh; each build.sh skips its build
# when nothing changed. Needs componentize-py (pip install componentize-py). Stops at the first
# plugin that fails to build.
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: bash plugins/build-python.sh OUTDIR" >&2
    exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
built=0
for dir in "$here"/*/; do
    if [ -f "$dir/app.py" ] && [ -f "$dir/build.sh" ]; then
        bash "$dir/build.sh" "$1"
        built=$((built + 1))
    fi
done
if [ "$built" -eq 0 ]; then
    echo "error: no Python plugin found under $here" >&2
    exit 1
fi
