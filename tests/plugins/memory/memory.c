/* validate allocates 1 MiB blocks without bound, touching every page, so linear memory grows
 * until the host's memory limit stops it (herd traps a memory.grow over the limit). Should
 * memory.grow fail without a trap instead, malloc returns NULL and abort() traps: the call never
 * returns normally either way. */
#include <stdlib.h>

#include "validate.h"

#define BLOCK (1 << 20)

static void *volatile head; /* the blocks are chained from here, so none is optimized away */

bool exports_herd_plugin_validator_validate(exports_herd_plugin_validator_change_t *change,
                                            validate_string_t *err) {
    (void)err;
    exports_herd_plugin_validator_change_free(change);
    for (;;) {
        char *block = malloc(BLOCK);
        if (!block) abort();
        for (size_t i = 0; i < BLOCK; i += 4096) block[i] = 1;
        *(void **)block = head;
        head = block;
    }
}
