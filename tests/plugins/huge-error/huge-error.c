/* validate refuses every write with a 16 MiB message: the host must cut it to a sane size.
 * Needs a memory limit of about 20 MiB or more. */
#include <stdlib.h>
#include <string.h>

#include "validate.h"

#define SIZE (16 << 20)

bool exports_herd_plugin_validator_validate(exports_herd_plugin_validator_change_t *change,
                                            validate_string_t *err) {
    exports_herd_plugin_validator_change_free(change);
    char *message = malloc(SIZE);
    if (!message) abort();
    memset(message, 'e', SIZE);
    memcpy(message, "huge error: ", 12);
    err->ptr = (uint8_t *)message; /* freed by the generated post-return function */
    err->len = SIZE;
    return false;
}
