#!/usr/bin/env bash
# Builds herd's WebAssembly plugins (components of the herd:plugin contract, wit/herd.wit).
#
#   bash plugins/build.sh [--out DIR]               the shipped plugins -> DIR/<name>.wasm
#   bash plugins/build.sh --c-dir DIR [--out DIR]   every C plugin folder DIR/<name>/
#
# --out defaults to target/plugins under the repository root.
#
# A C plugin folder holds *.c (and *.h) sources and, with --c-dir, a `world` file naming its
# world (validate, transform, derive or plugin). A folder may also hold a `wit/` folder: its
# WIT files then form the package the world comes from, with the herd contract available as a
# dependency (`include herd:plugin/validate@0.1.0;`).
#
# C steps: herd-plugin-tool bindgen-c (<world>.h, <world>.c, <world>_component_type.o),
# clang --target=wasm32-wasi -mexec-model=reactor, herd-plugin-tool componentize (WASI preview1
# reactor adapter; the component is validated). Outputs newer than all their inputs are kept.
#
# Needs: cargo, clang, wasm-ld (lld), wasi-libc and the wasm32 compiler runtime. Debian:
#   apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
# CLANG=... picks another clang; WASI_SYSROOT=... a wasi-sysroot (e.g. from wasi-sdk).
set -euo pipefail
shopt -s nullglob

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$ROOT/plugins/build.sh
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET # cargo runs in $ROOT
TOOL=$TARGET/debug/herd-plugin-tool
CLANG=${CLANG:-clang}
OUT=$ROOT/target/plugins
C_DIR=

C_FLAGS=(--target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Werror
    # The shadow stack at the bottom of memory: an overflow traps instead of overwriting data.
    -Wl,--stack-first)
if [[ -n ${WASI_SYSROOT:-} ]]; then C_FLAGS+=("--sysroot=$WASI_SYSROOT"); fi

die() {
    echo "build.sh: $*" >&2
    exit 1
}

usage() { sed -n '2,12s/^# \{0,1\}//p' "$SELF"; }

# ---- tools ----

check_c_toolchain() {
    command -v "$CLANG" >/dev/null ||
        die "$CLANG not found: install clang (Debian: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32) or set CLANG"
    command -v wasm-ld >/dev/null || die "wasm-ld not found: install lld (Debian: apt-get install lld)"
    mkdir -p "$BUILD"
    if ! printf '#include <stdlib.h>\n#include <regex.h>\nvoid *f(size_t n) { return malloc(n); }\n' |
        "$CLANG" "${C_FLAGS[@]}" -x c - -o "$BUILD/probe.wasm" 2>"$BUILD/probe.log"; then
        cat "$BUILD/probe.log" >&2
        die "$CLANG cannot build for wasm32-wasi: wasi-libc (Debian: wasi-libc) or the wasm32 compiler runtime (Debian: libclang-rt-14-dev-wasm32) is missing; or set WASI_SYSROOT to a wasi-sysroot"
    fi
}

build_tool() {
    local inputs=("$ROOT"/plugins/tool/src/*.rs "$ROOT/plugins/tool/Cargo.toml" "$ROOT/Cargo.toml"
        "$ROOT/Cargo.lock")
    if up_to_date "$TOOL" "${inputs[@]}"; then return; fi
    command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
    (cd "$ROOT" && cargo build -q -p herd-plugin-tool) || die "cannot build herd-plugin-tool"
    [[ -x $TOOL ]] || die "herd-plugin-tool not found at $TOOL"
}

# True if $1 exists and is newer than every other argument.
up_to_date() {
    local out=$1 f
    shift
    [[ -f $out ]] || return 1
    for f in "$@"; do [[ $f -nt $out ]] && return 1; done
    return 0
}

# ---- languages ----

# build_c NAME WORLD SRC_DIR: SRC_DIR/*.c -> $OUT/NAME.wasm, exporting WORLD's hooks.
build_c() {
    local name=$1 world=$2 src=$3
    local out=$OUT/$name.wasm work=$BUILD/$name wit=$ROOT/wit
    local sources=("$src"/*.c)
    ((${#sources[@]})) || die "$src: no .c sources"
    local inputs=("${sources[@]}" "$src"/*.h "$ROOT"/wit/*.wit "$TOOL" "$SELF")
    if [[ -d $src/wit ]]; then inputs+=("$src"/wit/*.wit); fi
    if up_to_date "$out" "${inputs[@]}"; then
        echo "  $name: up to date"
        return
    fi
    echo "  $name ($world)"
    rm -rf "$work"
    mkdir -p "$work"
    if [[ -d $src/wit ]]; then # the plugin's own WIT package, with the contract as a dependency
        wit=$work/wit
        mkdir -p "$wit/deps/herd"
        cp "$src"/wit/*.wit "$wit/"
        cp "$ROOT"/wit/*.wit "$wit/deps/herd/"
    fi
    "$TOOL" bindgen-c --wit "$wit" --world "$world" --out "$work/bindings" ||
        die "$name: cannot generate the C bindings"
    "$CLANG" "${C_FLAGS[@]}" -I "$work/bindings" -I "$src" "${sources[@]}" \
        "$work/bindings/$world.c" "$work/bindings/${world}_component_type.o" \
        -o "$work/$name.core.wasm" || die "$name: compilation failed"
    "$TOOL" componentize "$work/$name.core.wasm" -o "$work/$name.wasm" ||
        die "$name: cannot make a component"
    mv "$work/$name.wasm" "$out"
}

# build_c_dir DIR: every DIR/<name>/ with a `world` file, built by build_c.
build_c_dir() {
    local dir=$1 d name world
    [[ -d $dir ]] || die "$dir: no such directory"
    for d in "$dir"/*/; do
        d=${d%/}
        name=${d##*/}
        if [[ ! -f $d/world ]]; then
            echo "  $name: skipped (no world file)"
            continue
        fi
        world=$(tr -d '[:space:]' <"$d/world")
        build_c "$name" "$world" "$d"
    done
}

# The shipped plugins, one line each.
build_shipped() {
    build_c json-schema validate "$ROOT/plugins/json-schema"
    # The Python plugins (componentize-py): every plugins/<name>/ with an app.py and a build.sh.
    bash "$ROOT/plugins/build-python.sh" "$OUT"
}

# ---- main ----

while (($#)); do
    case $1 in
    --out)
        (($# >= 2)) || die "--out needs a directory"
        OUT=$2
        shift 2
        ;;
    --c-dir)
        (($# >= 2)) || die "--c-dir needs a directory"
        C_DIR=$(cd "$2" 2>/dev/null && pwd) || die "$2: no such directory"
        shift 2
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUILD=$OUT/.build # per plugin: bindings, core module, assembled WIT

check_c_toolchain
build_tool
echo "building plugins into $OUT"
if [[ -n $C_DIR ]]; then
    build_c_dir "$C_DIR"
else
    build_shipped
fi
