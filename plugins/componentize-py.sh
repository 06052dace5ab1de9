#!/usr/bin/env bash
# Builds one Python plugin into a WebAssembly component with componentize-py.
#
#   bash plugins/componentize-py.sh PLUGIN_DIR WORLD OUTDIR   -> OUTDIR/<plugin folder name>.wasm
#
# Used by each Python plugin's build.sh. The component is built from the plugin's app.py and the
# other .py files beside it (not test_*.py), against the world WORLD of wit/ (set HERD_WIT_DIR to
# use another WIT folder). It is rebuilt only when an input changed: the sources, the WIT, this
# script, the bundled packages (vendor.txt) or the componentize-py version (their digest is kept
# in OUTDIR/.build/<name>.inputs).
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

# Pure-Python packages a plugin bundles (its vendor.txt, one import name per line), taken from
# this machine's Python: pip installs them when missing.
vendored=()
if [ -f "$plugin_dir/vendor.txt" ]; then
    while read -r module; do
        [ -n "$module" ] || continue
        if ! python3 -c "import $module" 2>/dev/null; then
            echo "$name: installing $module (pip) to bundle it"
            python3 -m pip install -q "$module" 2>/dev/null ||
                python3 -m pip install -q --break-system-packages "$module"
        fi
        vendored+=("$(python3 -c "import $module, os; print(os.path.dirname($module.__file__))")")
    done <"$plugin_dir/vendor.txt"
fi

out=$outdir/$name.wasm
mkdir -p "$outdir/.build"
stamp=$outdir/.build/$name.inputs
digest=$(
    {
        echo "$version $world"
        for package in "${vendored[@]}"; do
            find "$package" -name '*.py' -type f | sort | xargs sha256sum | sed 's|  .*/|  |'
        done
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
for package in "${vendored[@]}"; do
    # The Python sources only: no compiled speedups (they are not WebAssembly), no caches.
    (cd "$(dirname "$package")" && find "$(basename "$package")" -name '*.py' -print0 |
        tar --null -T - -cf -) | tar -C "$work/src" -xf -
done

echo "$name: componentize-py -d $wit_dir -w $world componentize app -p src -o $out"
start=$(date +%s.%N)
(cd "$work" && componentize-py -d "$wit_dir" -w "$world" componentize app -p src -o "$work/$name.wasm")
end=$(date +%s.%N)
mv "$work/$name.wasm" "$out"
echo "$digest" >"$stamp"
seconds=$(awk "BEGIN { printf \"%.1f\", $end - $start }")
echo "$name: built $out ($(stat -c %s "$out") bytes) in $seconds s"
