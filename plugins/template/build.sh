#!/usr/bin/env bash
# Builds the template plugin (world `derive`): bash plugins/template/build.sh OUTDIR -> OUTDIR/template.wasm
# Needs componentize-py (pip install componentize-py) and bundles Jinja2 and MarkupSafe
# (vendor.txt; pip installs them when missing); skips the build when nothing changed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ $# -ne 1 ]; then
    echo "usage: bash plugins/template/build.sh OUTDIR" >&2
    exit 2
fi
exec bash "$here/../componentize-py.sh" "$here" derive "$1"
