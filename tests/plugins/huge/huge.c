/* derive returns 20,000 outputs of 1 KiB each (about 20 MB), far over herd's output limit.
 * A plugin cannot learn its output prefix, so it is fixed: install it with the output prefix
 * /out-huge (the paths are /out-huge/k<i>). Needs a memory limit of about 32 MiB. */
#include <stdlib.h>
#include <string.h>

#include "derive.h"

#define COUNT 20000
#define VALUE 1024 /* bytes of JSON text per value: a string of VALUE - 2 'x' */

bool exports_herd_plugin_deriver_derive(derive_list_string_t *changed,
                                        exports_herd_plugin_deriver_list_output_t *ret,
                                        derive_string_t *err) {
    (void)err;
    derive_list_string_free(changed);
    herd_plugin_types_output_t *outputs = malloc(COUNT * sizeof *outputs);
    if (!outputs) abort();
    for (size_t i = 0; i < COUNT; i++) {
        char path[32] = "/out-huge/k", digits[12];
        size_t n = 0;
        for (size_t v = i; n == 0 || v > 0; v /= 10) digits[n++] = (char)('0' + v % 10);
        for (size_t p = strlen(path); n > 0; p++) path[p] = digits[--n]; /* no stdio: no WASI */
        derive_string_dup(&outputs[i].path, path);
        char *value = malloc(VALUE);
        if (!value) abort();
        memset(value, 'x', VALUE);
        value[0] = value[VALUE - 1] = '"';
        outputs[i].value.ptr = (uint8_t *)value;
        outputs[i].value.len = VALUE;
    }
    /* The generated post-return function frees the list and its strings. */
    ret->ptr = outputs;
    ret->len = COUNT;
    return true;
}
