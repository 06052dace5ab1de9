/* A strict JSON parser (RFC 8259) building a value tree. */
#ifndef HERD_JSON_H
#define HERD_JSON_H

#include <stdbool.h>
#include <stddef.h>

/* Arrays and objects nest at most this deep; deeper input is refused. */
#define JSON_MAX_DEPTH 64

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value json_value;

typedef struct {
    char *key; /* UTF-8, NUL-terminated (may also contain NUL: use key_len) */
    size_t key_len;
    json_value *value;
} json_member;

struct json_value {
    json_type type;
    union {
        bool boolean;
        struct {
            double value;
            char *text; /* as written in the input, for messages */
        } number;
        struct {
            char *ptr; /* UTF-8, NUL-terminated (may also contain NUL: use len) */
            size_t len;
        } string;
        struct {
            json_value **items;
            size_t len;
        } array;
        struct {
            json_member *members; /* in input order, duplicates kept */
            size_t len;
        } object;
    } u;
};

/* Parses `len` bytes of JSON text. Returns the value tree (free it with json_free), or NULL
 * with a message in `err` ("invalid JSON at byte 12: ..."). */
json_value *json_parse(const char *text, size_t len, char *err, size_t err_size);

void json_free(json_value *v);

/* The member `key` of an object (the last one if the key repeats), or NULL. */
const json_value *json_get(const json_value *object, const char *key);
const json_value *json_get_n(const json_value *object, const char *key, size_t key_len);

/* Equality as JSON Schema defines it: numbers by value, objects regardless of order. */
bool json_equal(const json_value *a, const json_value *b);

/* "null", "boolean", "number", "string", "array" or "object". */
const char *json_type_name(const json_value *v);

/* True for a number with no fractional part. */
bool json_is_integer(const json_value *v);

/* The number of code points in valid UTF-8 text. */
size_t json_utf8_length(const char *s, size_t len);

#endif
