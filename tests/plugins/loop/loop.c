/* validate never returns: the host must stop it at its time limit (epoch deadline). */
#include "validate.h"

bool exports_herd_plugin_validator_validate(exports_herd_plugin_validator_change_t *change,
                                            validate_string_t *err) {
    (void)err;
    exports_herd_plugin_validator_change_free(change);
    volatile unsigned long counter = 0; /* volatile: the loop is not optimized away */
    for (;;) counter++;
}
