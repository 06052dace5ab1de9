/* A validate plugin that also imports herd:evil/net (see wit/evil.wit) and calls it, so the
 * import stays in the component. herd must refuse to install it. The build script assembles
 * the WIT: wit/evil.wit plus the herd contract as the dependency herd:plugin. */
#include "evil.h"

bool exports_herd_plugin_validator_validate(exports_herd_plugin_validator_change_t *change,
                                            evil_string_t *err) {
    (void)err;
    exports_herd_plugin_validator_change_free(change);
    evil_string_t host;
    evil_string_set(&host, "exfiltrate.example.com");
    return herd_evil_net_connect(&host) != 0;
}
