/* validate refuses a write of the JSON string "reject" with "rejected by counter v1" and
 * accepts everything else. counter and counter2 differ only in the version in the message
 * (the hot-reload test upgrades v1 to v2 under load). It counts its calls, to hold some state. */
#include <string.h>

#include "validate.h"

static const char REJECT[] = "\"reject\"";
static unsigned long calls;

bool exports_herd_plugin_validator_validate(exports_herd_plugin_validator_change_t *change,
                                            validate_string_t *err) {
    calls++;
    bool reject = change->value.is_some && change->value.val.len == sizeof REJECT - 1 &&
                  memcmp(change->value.val.ptr, REJECT, sizeof REJECT - 1) == 0;
    exports_herd_plugin_validator_change_free(change);
    if (!reject) return true;
    validate_string_dup(err, "rejected by counter v1"); /* freed by the post-return function */
    return false;
}
