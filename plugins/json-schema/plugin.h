/* The hook's logic, kept apart from the wit-bindgen glue (the end of plugin.c) so that
 * test/test.c can run it natively against a stubbed store. */
#ifndef HERD_JSON_SCHEMA_PLUGIN_H
#define HERD_JSON_SCHEMA_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>

/* What the logic reads from the host. */
/* The JSON at `path` as a malloc'd string (free it), or false if there is none. */
bool store_get(const char *path, char **json, size_t *len);
/* The children of `path` (directories end with `/`): free them with free_names. */
char **store_list(const char *path, size_t *count);
void free_names(char **names, size_t count);
void log_debug(const char *message);

/* Checks a write to `path` (has_value is false for a delete): NULL to accept it, or a
 * malloc'd message to refuse it. */
char *check_change(const char *path, bool has_value);

#endif
