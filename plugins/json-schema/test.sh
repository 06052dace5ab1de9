#!/usr/bin/env bash
# Compiles the json-schema plugin's C logic natively (host gcc, store calls stubbed) and runs
# its unit tests, with AddressSanitizer (leaks included) when the compiler supports it.
# Usage: bash plugins/json-schema/test.sh        Prints ok or failed; exits non-zero on failure.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CC=${CC:-gcc}
command -v "$CC" >/dev/null || { echo "test.sh: $CC not found: install gcc (or set CC)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

flags=(-std=c11 -D_POSIX_C_SOURCE=200809L -DHERD_NATIVE_TEST -Wall -Wextra -Werror -g -O1)
sanitize=(-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
if echo 'int main(void) { return 0; }' | "$CC" "${sanitize[@]}" -x c - -o "$tmp/probe" 2>/dev/null &&
    "$tmp/probe" 2>/dev/null; then
    flags+=("${sanitize[@]}")
else
    echo "test.sh: no working AddressSanitizer here: running without leak checks" >&2
fi

"$CC" "${flags[@]}" "$here/json.c" "$here/schema.c" "$here/plugin.c" "$here/test/test.c" -lm \
    -o "$tmp/test"
if "$tmp/test"; then
    echo ok
else
    echo failed
    exit 1
fi
