/* validate traps (wasm `unreachable`) on every call. */
#include "validate.h"

bool exports_herd_plugin_validator_validate(exports_herd_plugin_validator_change_t *change,
                                            validate_string_t *err) {
    (void)change;
    (void)err;
    __builtin_trap();
}
