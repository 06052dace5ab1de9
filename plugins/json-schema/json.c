/* A strict JSON parser: the full RFC 8259 grammar, UTF-8 checked, \u escapes (surrogate
 * pairs included) decoded to UTF-8, nesting limited to JSON_MAX_DEPTH. */
#include "json.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const unsigned char *start, *p, *end;
    char *err;
    size_t err_size;
    int depth;
} parser;

static json_value *parse_value(parser *ps);

/* Records the first error; always returns NULL so callers can `return fail(...)`. */
static void *fail(parser *ps, const char *what) {
    if (ps->err && ps->err_size > 0 && ps->err[0] == '\0')
        snprintf(ps->err, ps->err_size, "invalid JSON at byte %zu: %s",
                 (size_t)(ps->p - ps->start), what);
    return NULL;
}

static void *oom(parser *ps) {
    if (ps->err && ps->err_size > 0 && ps->err[0] == '\0')
        snprintf(ps->err, ps->err_size, "out of memory");
    return NULL;
}

static void skip_ws(parser *ps) {
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static bool is_digit(const parser *ps) { return ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9'; }

static json_value *new_value(parser *ps, json_type type) {
    json_value *v = calloc(1, sizeof *v);
    if (!v) return oom(ps);
    v->type = type;
    return v;
}

/* Grows *items (of *cap elements of `size` bytes) to hold at least len + 1. */
static bool grow(void **items, size_t *cap, size_t len, size_t size) {
    if (len < *cap) return true;
    size_t n = *cap ? *cap * 2 : 4;
    if (n > SIZE_MAX / size) return false;
    void *p = realloc(*items, n * size);
    if (!p) return false;
    *items = p;
    *cap = n;
    return true;
}

static json_value *parse_literal(parser *ps, const char *word, json_type type, bool b) {
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fail(ps, "unexpected character");
    ps->p += n;
    json_value *v = new_value(ps, type);
    if (v) v->u.boolean = b;
    return v;
}

static json_value *parse_number(parser *ps) {
    const unsigned char *s = ps->p;
    if (*ps->p == '-') ps->p++;
    if (ps->p < ps->end && *ps->p == '0') {
        ps->p++;
    } else if (is_digit(ps)) {
        while (is_digit(ps)) ps->p++;
    } else {
        return fail(ps, "expected a digit");
    }
    if (ps->p < ps->end && *ps->p == '.') {
        ps->p++;
        if (!is_digit(ps)) return fail(ps, "expected a digit after '.'");
        while (is_digit(ps)) ps->p++;
    }
    if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
        ps->p++;
        if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ps->p++;
        if (!is_digit(ps)) return fail(ps, "expected a digit in the exponent");
        while (is_digit(ps)) ps->p++;
    }
    size_t n = (size_t)(ps->p - s);
    json_value *v = new_value(ps, JSON_NUMBER);
    if (!v) return NULL;
    v->u.number.text = malloc(n + 1);
    if (!v->u.number.text) {
        free(v);
        return oom(ps);
    }
    memcpy(v->u.number.text, s, n);
    v->u.number.text[n] = '\0';
    v->u.number.value = strtod(v->u.number.text, NULL); /* the grammar is checked above */
    return v;
}

static int hex4(parser *ps) {
    if (ps->end - ps->p < 4) return -1;
    int cp = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = *ps->p++;
        cp <<= 4;
        if (c >= '0' && c <= '9') cp |= c - '0';
        else if (c >= 'a' && c <= 'f') cp |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') cp |= c - 'A' + 10;
        else return -1;
    }
    return cp;
}

static size_t put_utf8(unsigned char *out, uint32_t cp) {
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The length of the valid UTF-8 sequence at p (non-ASCII lead byte), or 0. Rejects overlong
 * forms, surrogates and code points above U+10FFFF. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* the range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if ((size_t)(end - p) < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if ((p[i] & 0xC0) != 0x80) return 0;
    return n;
}

/* Parses a string at ps->p (on the opening quote) into a new NUL-terminated buffer. */
static char *parse_string(parser *ps, size_t *out_len) {
    ps->p++; /* the opening quote */
    /* Decoding never makes the text longer: the raw span bounds the buffer. */
    const unsigned char *q = ps->p;
    while (q < ps->end && *q != '"') q += (*q == '\\' && q + 1 < ps->end) ? 2 : 1;
    unsigned char *buf = malloc((size_t)(q - ps->p) + 1), *o = buf;
    if (!buf) return oom(ps);
    for (;;) {
        if (ps->p >= ps->end) goto bad_end;
        unsigned char c = *ps->p;
        if (c == '"') {
            ps->p++;
            break;
        }
        if (c < 0x20) {
            fail(ps, "control character in string");
            goto bad;
        }
        if (c >= 0x80) {
            size_t n = utf8_seq(ps->p, ps->end);
            if (n == 0) {
                fail(ps, "invalid UTF-8");
                goto bad;
            }
            memcpy(o, ps->p, n);
            o += n;
            ps->p += n;
            continue;
        }
        ps->p++;
        if (c != '\\') {
            *o++ = c;
            continue;
        }
        if (ps->p >= ps->end) goto bad_end;
        const unsigned char *esc = ps->p - 1;
        switch (*ps->p++) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            int cp = hex4(ps);
            if (cp < 0) {
                ps->p = esc;
                fail(ps, "invalid \\u escape");
                goto bad;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                int lo = -1;
                if (ps->end - ps->p >= 2 && ps->p[0] == '\\' && ps->p[1] == 'u') {
                    ps->p += 2;
                    lo = hex4(ps);
                }
                if (lo < 0xDC00 || lo > 0xDFFF) {
                    ps->p = esc;
                    fail(ps, "high surrogate not followed by a low surrogate");
                    goto bad;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                ps->p = esc;
                fail(ps, "lone low surrogate");
                goto bad;
            }
            o += put_utf8(o, (uint32_t)cp);
            break;
        }
        default:
            ps->p = esc;
            fail(ps, "invalid escape");
            goto bad;
        }
    }
    *o = '\0';
    *out_len = (size_t)(o - buf);
    return (char *)buf;
bad_end:
    fail(ps, "unterminated string");
bad:
    free(buf);
    return NULL;
}

static json_value *parse_array(parser *ps) {
    ps->p++;
    json_value *v = new_value(ps, JSON_ARRAY);
    if (!v) return NULL;
    size_t cap = 0;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
        return v;
    }
    for (;;) {
        json_value *item = parse_value(ps);
        if (!item) goto bad;
        if (!grow((void **)&v->u.array.items, &cap, v->u.array.len, sizeof item)) {
            json_free(item);
            oom(ps);
            goto bad;
        }
        v->u.array.items[v->u.array.len++] = item;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
        } else if (ps->p < ps->end && *ps->p == ']') {
            ps->p++;
            return v;
        } else {
            fail(ps, ps->p < ps->end ? "expected ',' or ']'" : "unexpected end of input");
            goto bad;
        }
    }
bad:
    json_free(v);
    return NULL;
}

static json_value *parse_object(parser *ps) {
    ps->p++;
    json_value *v = new_value(ps, JSON_OBJECT);
    if (!v) return NULL;
    size_t cap = 0;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return v;
    }
    for (;;) {
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != '"') {
            fail(ps, ps->p < ps->end ? "expected a string key" : "unexpected end of input");
            goto bad;
        }
        size_t key_len;
        char *key = parse_string(ps, &key_len);
        if (!key) goto bad;
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') {
            free(key);
            fail(ps, ps->p < ps->end ? "expected ':'" : "unexpected end of input");
            goto bad;
        }
        ps->p++;
        json_value *value = parse_value(ps);
        if (!value) {
            free(key);
            goto bad;
        }
        if (!grow((void **)&v->u.object.members, &cap, v->u.object.len, sizeof(json_member))) {
            free(key);
            json_free(value);
            oom(ps);
            goto bad;
        }
        v->u.object.members[v->u.object.len++] = (json_member){key, key_len, value};
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
        } else if (ps->p < ps->end && *ps->p == '}') {
            ps->p++;
            return v;
        } else {
            fail(ps, ps->p < ps->end ? "expected ',' or '}'" : "unexpected end of input");
            goto bad;
        }
    }
bad:
    json_free(v);
    return NULL;
}

static json_value *parse_value(parser *ps) {
    skip_ws(ps);
    if (ps->p >= ps->end) return fail(ps, "unexpected end of input");
    switch (*ps->p) {
    case '{':
    case '[': {
        if (ps->depth >= JSON_MAX_DEPTH) return fail(ps, "nested too deeply (limit 64)");
        ps->depth++;
        json_value *v = *ps->p == '{' ? parse_object(ps) : parse_array(ps);
        ps->depth--;
        return v;
    }
    case '"': {
        size_t len;
        char *s = parse_string(ps, &len);
        if (!s) return NULL;
        json_value *v = new_value(ps, JSON_STRING);
        if (!v) {
            free(s);
            return NULL;
        }
        v->u.string.ptr = s;
        v->u.string.len = len;
        return v;
    }
    case 't': return parse_literal(ps, "true", JSON_BOOL, true);
    case 'f': return parse_literal(ps, "false", JSON_BOOL, false);
    case 'n': return parse_literal(ps, "null", JSON_NULL, false);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9')) return parse_number(ps);
        return fail(ps, "unexpected character");
    }
}

json_value *json_parse(const char *text, size_t len, char *err, size_t err_size) {
    parser ps = {(const unsigned char *)text, (const unsigned char *)text,
                 (const unsigned char *)text + len, err, err_size, 0};
    if (err && err_size > 0) err[0] = '\0';
    json_value *v = parse_value(&ps);
    if (!v) return NULL;
    skip_ws(&ps);
    if (ps.p != ps.end) {
        fail(&ps, "unexpected characters after the value");
        json_free(v);
        return NULL;
    }
    return v;
}

void json_free(json_value *v) {
    if (!v) return;
    switch (v->type) {
    case JSON_NUMBER: free(v->u.number.text); break;
    case JSON_STRING: free(v->u.string.ptr); break;
    case JSON_ARRAY:
        for (size_t i = 0; i < v->u.array.len; i++) json_free(v->u.array.items[i]);
        free(v->u.array.items);
        break;
    case JSON_OBJECT:
        for (size_t i = 0; i < v->u.object.len; i++) {
            free(v->u.object.members[i].key);
            json_free(v->u.object.members[i].value);
        }
        free(v->u.object.members);
        break;
    default: break;
    }
    free(v);
}

const json_value *json_get_n(const json_value *object, const char *key, size_t key_len) {
    if (!object || object->type != JSON_OBJECT) return NULL;
    for (size_t i = object->u.object.len; i-- > 0;) {
        const json_member *m = &object->u.object.members[i];
        if (m->key_len == key_len && memcmp(m->key, key, key_len) == 0) return m->value;
    }
    return NULL;
}

const json_value *json_get(const json_value *object, const char *key) {
    return json_get_n(object, key, strlen(key));
}

bool json_equal(const json_value *a, const json_value *b) {
    if (a->type != b->type) return false;
    switch (a->type) {
    case JSON_NULL: return true;
    case JSON_BOOL: return a->u.boolean == b->u.boolean;
    case JSON_NUMBER: return a->u.number.value == b->u.number.value;
    case JSON_STRING:
        return a->u.string.len == b->u.string.len &&
               memcmp(a->u.string.ptr, b->u.string.ptr, a->u.string.len) == 0;
    case JSON_ARRAY:
        if (a->u.array.len != b->u.array.len) return false;
        for (size_t i = 0; i < a->u.array.len; i++)
            if (!json_equal(a->u.array.items[i], b->u.array.items[i])) return false;
        return true;
    case JSON_OBJECT:
        if (a->u.object.len != b->u.object.len) return false;
        for (size_t i = 0; i < a->u.object.len; i++) {
            const json_member *m = &a->u.object.members[i];
            const json_value *other = json_get_n(b, m->key, m->key_len);
            if (!other || !json_equal(m->value, other)) return false;
        }
        return true;
    }
    return false;
}

const char *json_type_name(const json_value *v) {
    static const char *const names[] = {"null", "boolean", "number", "string", "array", "object"};
    return names[v->type];
}

bool json_is_integer(const json_value *v) {
    return v->type == JSON_NUMBER && isfinite(v->u.number.value) &&
           floor(v->u.number.value) == v->u.number.value;
}

size_t json_utf8_length(const char *s, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) n++;
    return n;
}
