/* derive returns one output outside any output prefix it may have: /app/stolen = 1. */
#include <stdlib.h>

#include "derive.h"

bool exports_herd_plugin_deriver_derive(derive_list_string_t *changed,
                                        exports_herd_plugin_deriver_list_output_t *ret,
                                        derive_string_t *err) {
    (void)err;
    derive_list_string_free(changed);
    /* The list and its strings are freed by the generated post-return function. */
    ret->ptr = malloc(sizeof *ret->ptr);
    if (!ret->ptr) abort();
    ret->len = 1;
    derive_string_dup(&ret->ptr[0].path, "/app/stolen");
    derive_string_dup(&ret->ptr[0].value, "1");
    return true;
}
