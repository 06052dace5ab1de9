/* The validate hook: schema docs under /schemas guard paths of the store (see README.md). */
#include "plugin.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "schema.h"

#define SCHEMAS "/schemas"

/* Whether path `a` is `b` or an ancestor of `b`, segment-wise (`/app/db` is not an ancestor
 * of `/app/dbx`). A trailing `/` on `a` is ignored; `/` is the ancestor of every path. */
static bool covers(const char *a, const char *b) {
    size_t n = strlen(a);
    while (n > 1 && a[n - 1] == '/') n--;
    if (n == 1 && a[0] == '/') return true;
    return strncmp(a, b, n) == 0 && (b[n] == '\0' || b[n] == '/');
}

static char *copy_n(const char *s, size_t n) {
    char *c = malloc(n + 1);
    if (!c) abort();
    memcpy(c, s, n);
    c[n] = '\0';
    return c;
}

/* The value at `path`, parsed; NULL if there is none, or if it does not parse (then *err). */
static json_value *get_json(const char *path, char **err) {
    char *text;
    size_t len;
    if (!store_get(path, &text, &len)) return NULL;
    char e[160];
    json_value *v = json_parse(text, len, e, sizeof e);
    free(text);
    if (!v) *err = msg_printf("%s: %s", path, e);
    return v;
}

/* Checks the shape of the schema doc at `doc_path`: NULL if it is well formed, else a message.
 * Sets *guards whenever `guards` is a usable path (it points into `doc`), and *schema when the
 * whole doc is well formed. */
static char *read_doc(const json_value *doc, const char *doc_path, const char **guards,
                      const json_value **schema) {
    *guards = NULL;
    *schema = NULL;
    if (doc->type != JSON_OBJECT)
        return msg_printf("%s: a schema doc must be an object "
                          "{\"guards\": \"/path\", \"schema\": {...}}", doc_path);
    const json_value *g = json_get(doc, "guards");
    if (!g) return msg_printf("%s: missing \"guards\" (the path the schema applies to)", doc_path);
    if (g->type != JSON_STRING || g->u.string.ptr[0] != '/' ||
        strlen(g->u.string.ptr) != g->u.string.len)
        return msg_printf("%s/guards: must be a path starting with /", doc_path);
    *guards = g->u.string.ptr;
    const json_value *s = json_get(doc, "schema");
    if (!s) return msg_printf("%s: missing \"schema\"", doc_path);
    if (s->type != JSON_OBJECT) return msg_printf("%s/schema: must be an object", doc_path);
    char *base = msg_printf("%s/schema", doc_path);
    char *msg = schema_check(s, base);
    free(base);
    if (!msg) *schema = s;
    return msg;
}

/* Checks the schema doc /schemas/<name> as it is after the write. */
static char *check_doc(const char *name, size_t len) {
    while (len > 0 && name[len - 1] == '/') len--; /* a directory entry */
    char *n = copy_n(name, len);
    char *doc_path = msg_printf(SCHEMAS "/%s", n);
    free(n);
    char *msg = NULL;
    json_value *doc = get_json(doc_path, &msg);
    if (doc) {
        const char *guards;
        const json_value *schema;
        msg = read_doc(doc, doc_path, &guards, &schema);
        json_free(doc);
    }
    free(doc_path);
    return msg;
}

/* A write at or under /schemas: the docs it touches must be well formed. */
static char *check_schema_docs(const char *path) {
    if (covers(path, SCHEMAS)) { /* `/` or `/schemas` itself: every doc */
        size_t count;
        char **names = store_list(SCHEMAS, &count);
        char *msg = NULL;
        for (size_t i = 0; i < count && !msg; i++) msg = check_doc(names[i], strlen(names[i]));
        free_names(names, count);
        return msg;
    }
    const char *name = path + strlen(SCHEMAS "/");
    return check_doc(name, strcspn(name, "/"));
}

/* Validates the value at `guards` (if any) against `schema`. */
static char *validate_guarded(const char *guards, const json_value *schema, const char *name) {
    size_t n = strlen(guards);
    while (n > 1 && guards[n - 1] == '/') n--;
    char *g = copy_n(guards, n);
    char *msg = NULL;
    json_value *value = get_json(g, &msg);
    if (value) {
        char *m = schema_validate(schema, value, strcmp(g, "/") == 0 ? "" : g);
        if (m) {
            msg = msg_printf("%s (schema %s)", m, name);
            free(m);
        }
        json_free(value);
    }
    free(g);
    return msg;
}

/* Applies the schema doc listed as `entry` under /schemas if it guards a path related to the
 * written `path` (the same, an ancestor or a descendant). */
static char *check_guard(const char *path, const char *entry) {
    size_t len = strlen(entry);
    while (len > 0 && entry[len - 1] == '/') len--;
    if (len == 0) return NULL;
    char *name = copy_n(entry, len);
    char *doc_path = msg_printf(SCHEMAS "/%s", name);
    char *msg = NULL;
    json_value *doc = get_json(doc_path, &msg);
    if (doc) {
        const char *guards;
        const json_value *schema;
        char *bad = read_doc(doc, doc_path, &guards, &schema);
        if (guards && (covers(guards, path) || covers(path, guards))) {
            /* A broken schema guarding this path refuses the write rather than let it by. */
            msg = bad ? msg_printf("%s (schema %s is invalid)", bad, name)
                      : validate_guarded(guards, schema, name);
        } else if (bad) {
            char *m = msg_printf("ignoring a malformed schema doc: %s", bad);
            log_debug(m);
            free(m);
        }
        free(bad);
        json_free(doc);
    }
    free(doc_path);
    free(name);
    return msg;
}

char *check_change(const char *path, bool has_value) {
    char *msg = NULL;
    /* Deletes under /schemas are always accepted. */
    if (has_value && (covers(SCHEMAS, path) || covers(path, SCHEMAS)))
        msg = check_schema_docs(path);
    if (msg) return msg;
    size_t count;
    char **names = store_list(SCHEMAS, &count);
    for (size_t i = 0; i < count && !msg; i++) msg = check_guard(path, names[i]);
    free_names(names, count);
    return msg;
}

void free_names(char **names, size_t count) {
    for (size_t i = 0; i < count; i++) free(names[i]);
    free(names);
}

#ifndef HERD_NATIVE_TEST
/* ---- the glue to the generated bindings (validate.h, from the `validate` world) ---- */
#include "validate.h"

bool store_get(const char *path, char **json, size_t *len) {
    validate_string_t p;
    validate_string_set(&p, path); /* borrowed: the host copies it */
    herd_plugin_store_json_t value;
    if (!herd_plugin_store_get(&p, &value)) return false;
    *json = copy_n((const char *)value.ptr, value.len);
    *len = value.len;
    herd_plugin_store_json_free(&value); /* results are owned by the caller */
    return true;
}

char **store_list(const char *path, size_t *count) {
    validate_string_t p;
    validate_string_set(&p, path);
    validate_list_string_t list;
    herd_plugin_store_list(&p, &list);
    char **names = malloc((list.len ? list.len : 1) * sizeof *names);
    if (!names) abort();
    for (size_t i = 0; i < list.len; i++)
        names[i] = copy_n((const char *)list.ptr[i].ptr, list.ptr[i].len);
    *count = list.len;
    validate_list_string_free(&list);
    return names;
}

void log_debug(const char *message) {
    validate_string_t m;
    validate_string_set(&m, message);
    herd_plugin_log_log(HERD_PLUGIN_LOG_LEVEL_DEBUG, &m);
}

bool exports_herd_plugin_validator_validate(exports_herd_plugin_validator_change_t *change,
                                            validate_string_t *err) {
    char *path = copy_n((const char *)change->path.ptr, change->path.len);
    bool has_value = change->value.is_some;
    /* Arguments of an export are owned by the callee: free them. */
    exports_herd_plugin_validator_change_free(change);
    char *msg = check_change(path, has_value);
    free(path);
    if (!msg) return true;
    /* The generated post-return function frees the message (it is never empty). */
    err->ptr = (uint8_t *)msg;
    err->len = strlen(msg);
    return false;
}
#endif
