/* JSON Schema keywords (a subset of draft 2020-12, see README.md). */
#include "schema.h"

#include <locale.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A growable NUL-terminated string. Running out of memory aborts (a trap in wasm). */
typedef struct {
    char *ptr;
    size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->ptr, cap);
        if (!p) abort();
        b->ptr = p;
        b->cap = cap;
    }
    memcpy(b->ptr + b->len, s, n);
    b->len += n;
    b->ptr[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_vprintf(sbuf *b, const char *fmt, va_list ap) {
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) abort();
    char *s = malloc((size_t)n + 1);
    if (!s) abort();
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    sb_add(b, s, (size_t)n);
    free(s);
}

char *msg_printf(const char *fmt, ...) {
    sbuf b = {0};
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(&b, fmt, ap);
    va_end(ap);
    if (!b.ptr) sb_add(&b, "", 0);
    return b.ptr;
}

/* Appends `s` as a JSON string literal, cut after `max` code points. */
static void sb_quote(sbuf *b, const char *s, size_t len, size_t max) {
    sb_str(b, "\"");
    size_t points = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c & 0xC0) != 0x80 && points++ == max) {
            sb_str(b, "...");
            break;
        }
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c;
            sb_add(b, esc, 2);
        } else if (c < 0x20) {
            const char *short_esc = c ? strchr("\bb\ff\nn\rr\tt", c) : NULL;
            if (short_esc) snprintf(esc, sizeof esc, "\\%c", short_esc[1]);
            else snprintf(esc, sizeof esc, "\\u%04x", c);
            sb_str(b, esc);
        } else {
            sb_add(b, (const char *)&s[i], 1);
        }
    }
    sb_str(b, "\"");
}

/* A short description of a value for messages: scalars as JSON, containers by kind. */
static void sb_describe(sbuf *b, const json_value *v) {
    switch (v->type) {
    case JSON_NULL: sb_str(b, "null"); break;
    case JSON_BOOL: sb_str(b, v->u.boolean ? "true" : "false"); break;
    case JSON_NUMBER: sb_str(b, v->u.number.text); break;
    case JSON_STRING: sb_quote(b, v->u.string.ptr, v->u.string.len, 40); break;
    case JSON_ARRAY: sb_str(b, "an array"); break;
    case JSON_OBJECT: sb_str(b, "an object"); break;
    }
}

/* Appends "/<key>" as a JSON pointer token (~ as ~0, / as ~1). */
static void sb_token(sbuf *b, const char *key, size_t len) {
    sb_str(b, "/");
    for (size_t i = 0; i < len; i++) {
        if (key[i] == '~') sb_str(b, "~0");
        else if (key[i] == '/') sb_str(b, "~1");
        else sb_add(b, &key[i], 1);
    }
}

/* Where the checker or validator is: `base` plus a JSON pointer, and the first failure. */
typedef struct {
    const char *base;
    sbuf where;
    char *msg;
} ctx;

static size_t enter(ctx *c, const char *key, size_t len) {
    size_t mark = c->where.len;
    sb_token(&c->where, key, len);
    return mark;
}

static size_t enter_index(ctx *c, size_t i) {
    char n[24];
    snprintf(n, sizeof n, "%zu", i);
    return enter(c, n, strlen(n));
}

static void leave(ctx *c, size_t mark) {
    c->where.len = mark;
    c->where.ptr[mark] = '\0';
}

/* Records "<location>: <reason>" and returns false. */
static bool failf(ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool failf(ctx *c, const char *fmt, ...) {
    sbuf b = {0};
    sb_str(&b, c->base);
    if (c->where.ptr) sb_str(&b, c->where.ptr);
    if (b.len == 0) sb_str(&b, "/");
    sb_str(&b, ": ");
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(&b, fmt, ap);
    va_end(ap);
    c->msg = b.ptr;
    return false;
}

/* Like failf, with the first %s replaced by a description of `v`. */
static bool fail_value(ctx *c, const json_value *v, const char *fmt, const char *arg) {
    sbuf d = {0};
    sb_describe(&d, v);
    failf(c, fmt, d.ptr, arg);
    free(d.ptr);
    return false;
}

static const char *const TYPES[] = {"null", "boolean", "object", "array", "number", "string",
                                    "integer"};

static bool known_type(const json_value *t) {
    if (t->type != JSON_STRING) return false;
    for (size_t i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
        if (strcmp(t->u.string.ptr, TYPES[i]) == 0 && strlen(TYPES[i]) == t->u.string.len)
            return true;
    return false;
}

static bool type_matches(const char *name, const json_value *v) {
    if (strcmp(name, "integer") == 0) return json_is_integer(v);
    return strcmp(name, json_type_name(v)) == 0;
}

/* Patterns are POSIX extended regular expressions, matched on code points (UTF-8 locale). */
static int compile(regex_t *re, const char *pattern) {
    static bool locale_set = false;
    if (!locale_set) {
        setlocale(LC_CTYPE, "C.UTF-8");
        locale_set = true;
    }
    return regcomp(re, pattern, REG_EXTENDED | REG_NOSUB);
}

/* ---- checking schemas ---- */

static bool check(ctx *c, const json_value *s);

static bool check_keyword(ctx *c, const char *k, const json_value *v) {
    if (strcmp(k, "type") == 0) {
        if (v->type == JSON_STRING) {
            return known_type(v) || fail_value(c, v, "unknown type %s", NULL);
        }
        if (v->type != JSON_ARRAY || v->u.array.len == 0)
            return failf(c, "must be a type name or a non-empty array of type names");
        for (size_t i = 0; i < v->u.array.len; i++) {
            const json_value *t = v->u.array.items[i];
            if (!known_type(t)) {
                enter_index(c, i);
                return t->type == JSON_STRING ? fail_value(c, t, "unknown type %s", NULL)
                                              : failf(c, "must be a type name");
            }
        }
        return true;
    }
    if (strcmp(k, "required") == 0) {
        if (v->type != JSON_ARRAY) return failf(c, "must be an array of strings");
        for (size_t i = 0; i < v->u.array.len; i++)
            if (v->u.array.items[i]->type != JSON_STRING)
                return failf(c, "must be an array of strings");
        return true;
    }
    if (strcmp(k, "properties") == 0) {
        if (v->type != JSON_OBJECT) return failf(c, "must be an object of schemas");
        for (size_t i = 0; i < v->u.object.len; i++) {
            const json_member *m = &v->u.object.members[i];
            size_t mark = enter(c, m->key, m->key_len);
            if (!check(c, m->value)) return false;
            leave(c, mark);
        }
        return true;
    }
    if (strcmp(k, "additionalProperties") == 0 || strcmp(k, "items") == 0) {
        if (v->type == JSON_ARRAY && strcmp(k, "items") == 0)
            return failf(c, "the array form of items is not supported: give one schema");
        return check(c, v);
    }
    if (strcmp(k, "enum") == 0) return v->type == JSON_ARRAY || failf(c, "must be an array");
    if (strcmp(k, "minimum") == 0 || strcmp(k, "maximum") == 0 ||
        strcmp(k, "exclusiveMinimum") == 0 || strcmp(k, "exclusiveMaximum") == 0)
        return v->type == JSON_NUMBER || failf(c, "must be a number");
    if (strcmp(k, "minLength") == 0 || strcmp(k, "maxLength") == 0 ||
        strcmp(k, "minItems") == 0 || strcmp(k, "maxItems") == 0)
        return (json_is_integer(v) && v->u.number.value >= 0) ||
               failf(c, "must be a non-negative integer");
    if (strcmp(k, "pattern") == 0) {
        if (v->type != JSON_STRING) return failf(c, "must be a string");
        if (strlen(v->u.string.ptr) != v->u.string.len) return failf(c, "must not contain NUL");
        regex_t re;
        int rc = compile(&re, v->u.string.ptr);
        if (rc != 0) {
            char err[128];
            regerror(rc, &re, err, sizeof err);
            return failf(c, "does not compile as a POSIX extended regular expression: %s", err);
        }
        regfree(&re);
        return true;
    }
    return true; /* unknown keywords are ignored; `const` takes any value */
}

static bool check(ctx *c, const json_value *s) {
    if (s->type == JSON_BOOL) return true;
    if (s->type != JSON_OBJECT) return failf(c, "a schema must be an object or a boolean");
    for (size_t i = 0; i < s->u.object.len; i++) {
        const json_member *m = &s->u.object.members[i];
        if (strlen(m->key) != m->key_len) continue; /* a key with NUL is no keyword */
        size_t mark = enter(c, m->key, m->key_len);
        if (!check_keyword(c, m->key, m->value)) return false;
        leave(c, mark);
    }
    return true;
}

char *schema_check(const json_value *schema, const char *base) {
    ctx c = {base, {0}, NULL};
    check(&c, schema);
    free(c.where.ptr);
    return c.msg;
}

/* ---- validating values ---- */

static bool validate(ctx *c, const json_value *s, const json_value *v);

static bool validate_type(ctx *c, const json_value *t, const json_value *v) {
    if (t->type == JSON_STRING) {
        if (type_matches(t->u.string.ptr, v)) return true;
        return fail_value(c, v, "expected %2$s, got %1$s", t->u.string.ptr);
    }
    sbuf names = {0};
    for (size_t i = 0; i < t->u.array.len; i++) {
        const char *name = t->u.array.items[i]->u.string.ptr;
        if (type_matches(name, v)) {
            free(names.ptr);
            return true;
        }
        if (i > 0) sb_str(&names, " or ");
        sb_str(&names, name);
    }
    fail_value(c, v, "expected %2$s, got %1$s", names.ptr);
    free(names.ptr);
    return false;
}

static bool validate_number(ctx *c, const json_value *s, const json_value *v) {
    double x = v->u.number.value;
    const json_value *k;
    if ((k = json_get(s, "minimum")) && x < k->u.number.value)
        return fail_value(c, v, "%s is less than the minimum %s", k->u.number.text);
    if ((k = json_get(s, "maximum")) && x > k->u.number.value)
        return fail_value(c, v, "%s is greater than the maximum %s", k->u.number.text);
    if ((k = json_get(s, "exclusiveMinimum")) && x <= k->u.number.value)
        return fail_value(c, v, "%s is not greater than the exclusive minimum %s",
                          k->u.number.text);
    if ((k = json_get(s, "exclusiveMaximum")) && x >= k->u.number.value)
        return fail_value(c, v, "%s is not less than the exclusive maximum %s",
                          k->u.number.text);
    return true;
}

static bool validate_string(ctx *c, const json_value *s, const json_value *v) {
    double n = (double)json_utf8_length(v->u.string.ptr, v->u.string.len);
    const json_value *k;
    if ((k = json_get(s, "minLength")) && n < k->u.number.value)
        return fail_value(c, v, "%s is shorter than the minimum length %s", k->u.number.text);
    if ((k = json_get(s, "maxLength")) && n > k->u.number.value)
        return fail_value(c, v, "%s is longer than the maximum length %s", k->u.number.text);
    if ((k = json_get(s, "pattern"))) {
        regex_t re;
        if (compile(&re, k->u.string.ptr) != 0) return failf(c, "the pattern does not compile");
        /* A string with NUL is matched up to its first NUL. */
        int rc = regexec(&re, v->u.string.ptr, 0, NULL, 0);
        regfree(&re);
        if (rc != 0) {
            sbuf p = {0};
            sb_quote(&p, k->u.string.ptr, k->u.string.len, 80);
            fail_value(c, v, "%s does not match the pattern %s", p.ptr);
            free(p.ptr);
            return false;
        }
    }
    return true;
}

static bool validate_array(ctx *c, const json_value *s, const json_value *v) {
    size_t n = v->u.array.len;
    const json_value *k;
    if ((k = json_get(s, "minItems")) && (double)n < k->u.number.value)
        return failf(c, "the array has %zu items, fewer than the minimum %s", n, k->u.number.text);
    if ((k = json_get(s, "maxItems")) && (double)n > k->u.number.value)
        return failf(c, "the array has %zu items, more than the maximum %s", n, k->u.number.text);
    if ((k = json_get(s, "items"))) {
        for (size_t i = 0; i < n; i++) {
            size_t mark = enter_index(c, i);
            if (!validate(c, k, v->u.array.items[i])) return false;
            leave(c, mark);
        }
    }
    return true;
}

static bool validate_object(ctx *c, const json_value *s, const json_value *v) {
    const json_value *k;
    if ((k = json_get(s, "required"))) {
        for (size_t i = 0; i < k->u.array.len; i++) {
            const json_value *name = k->u.array.items[i];
            if (!json_get_n(v, name->u.string.ptr, name->u.string.len))
                return fail_value(c, name, "missing required property %s", NULL);
        }
    }
    const json_value *props = json_get(s, "properties");
    const json_value *extra = json_get(s, "additionalProperties");
    for (size_t i = 0; i < v->u.object.len; i++) {
        const json_member *m = &v->u.object.members[i];
        const json_value *sub = json_get_n(props, m->key, m->key_len);
        if (!sub && !extra) continue;
        if (!sub && extra->type == JSON_BOOL && !extra->u.boolean) {
            sbuf q = {0};
            sb_quote(&q, m->key, m->key_len, 40);
            failf(c, "property %s is not allowed (additionalProperties is false)", q.ptr);
            free(q.ptr);
            return false;
        }
        size_t mark = enter(c, m->key, m->key_len);
        if (!validate(c, sub ? sub : extra, m->value)) return false;
        leave(c, mark);
    }
    return true;
}

static bool validate(ctx *c, const json_value *s, const json_value *v) {
    if (s->type == JSON_BOOL)
        return s->u.boolean || failf(c, "no value is allowed here (the schema is false)");
    const json_value *k;
    if ((k = json_get(s, "type")) && !validate_type(c, k, v)) return false;
    if ((k = json_get(s, "enum"))) {
        size_t i = 0;
        while (i < k->u.array.len && !json_equal(k->u.array.items[i], v)) i++;
        if (i == k->u.array.len) return fail_value(c, v, "%s is not one of the enum values", NULL);
    }
    if ((k = json_get(s, "const")) && !json_equal(k, v))
        return fail_value(c, v, "%s is not equal to the const value", NULL);
    switch (v->type) {
    case JSON_NUMBER: return validate_number(c, s, v);
    case JSON_STRING: return validate_string(c, s, v);
    case JSON_ARRAY: return validate_array(c, s, v);
    case JSON_OBJECT: return validate_object(c, s, v);
    default: return true;
    }
}

char *schema_validate(const json_value *schema, const json_value *instance, const char *base) {
    ctx c = {base, {0}, NULL};
    validate(&c, schema, instance);
    free(c.where.ptr);
    return c.msg;
}
