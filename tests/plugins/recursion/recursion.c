/* validate recurses without bound until wasmtime's native stack limit traps (StackOverflow).
 *
 * The frames use only the wasm call stack, no locals in linear memory: C's shadow stack (a
 * 64 KiB region in linear memory, placed first by -Wl,--stack-first) would otherwise run out
 * first, and that traps as an out-of-bounds memory access rather than a stack overflow. The
 * volatile store after the call keeps it from being a tail call (so it is not made a loop). */
#include "validate.h"

static volatile unsigned sink;
static volatile int stop; /* never set: only there so the recursion has a base case */

static unsigned recurse(unsigned n) {
    if (stop) return n;
    unsigned r = recurse(n + 1);
    sink = r;
    return r + n;
}

bool exports_herd_plugin_validator_validate(exports_herd_plugin_validator_change_t *change,
                                            validate_string_t *err) {
    (void)err;
    exports_herd_plugin_validator_change_free(change);
    sink = recurse(0);
    return true;
}
