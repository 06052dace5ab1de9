#!/usr/bin/env bash
# Builds one Python plugin into a WebAssembly component with componentize-py.
#
#   bash plugins/componentize-py.sh PLUGIN_DIR WORLD OUTDIR   -> OUTDIR/<plugin folder name>.wasm
#
# Used by each Python plugin's build.sh. The component is built from the plugin's app.py and the
# other .py files beside it (not test_*.py), against the world WORLD of wit/ (set HERD_WIT_DIR to
# use another WIT folder). It is rebuilt only when an input changed: the sources, the WIT, this
# script or the componentize-py version (their digest is kept in OUTDIR/.build/<name>.inputs).
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: bash plugins/componentize-py.sh PLUGIN_DIR WORLD OUTDIR" >&2
    exit 2
fi
plugin_dir=$(cd "$1" && pwd)
world=$2
name=$(basename "$plugin_dir")

if ! command -v componentize-py >/dev/null 2>&1; then
    echo "error: componentize-py is not installed, so the Python plugin $name cannot be built" >&2
    echo "hint: pip install componentize-py   (0.25.1 is the version the plugins are tested with)" >&2
    exit 1
fi
version=$(componentize-py --version)

mkdir -p "$3"
outdir=$(cd "$3" && pwd)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
wit_dir=$(cd "${HERD_WIT_DIR:-$here/../wit}" && pwd)

sources=()
for file in "$plugin_dir"/*.py; do
    case $(basename "$file") in test_*) continue ;; esac
    sources+=("$file")
done

out=$outdir/$name.wasm
mkdir -p "$outdir/.build"
stamp=$outdir/.build/$name.inputs
digest=$(
    {
        echo "$version $world"
        sha256sum "${sources[@]}" "${BASH_SOURCE[0]}" | sed 's|  .*/|  |'
        find "$wit_dir" -name '*.wit' -type f | sort | xargs sha256sum | sed 's|  .*/|  |'
    } | sha256sum | cut -d' ' -f1
)
if [ -f "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
    echo "$name: up to date ($out)"
    exit 0
fi

# componentize-py bundles every file of its Python path: give it only the plugin's sources.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
cp "${sources[@]}" "$work/src/"

echo "$name: componentize-py -d $wit_dir -w $world componentize app -p src -o $out"
start=$(date +%s.%N)
(cd "$work" && componentize-py -d "$wit_dir" -w "$world" componentize app -p src -o "$work/$name.wasm")
end=$(date +%s.%N)
mv "$work/$name.wasm" "$out"
echo "$digest" >"$stamp"
seconds=$(awk "BEGIN { printf \"%.1f\", $end - $start }")
echo "$name: built $out ($(stat -c %s "$out") bytes) in $seconds s"
