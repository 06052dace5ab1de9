/* transform answers something that is not JSON: ok("{not json"). */
#include "transform.h"

bool exports_herd_plugin_transformer_transform(exports_herd_plugin_transformer_change_t *change,
                                               exports_herd_plugin_transformer_json_t *ret,
                                               transform_string_t *err) {
    (void)err;
    exports_herd_plugin_transformer_change_free(change);
    transform_string_dup(ret, "{not json"); /* freed by the generated post-return function */
    return true;
}
