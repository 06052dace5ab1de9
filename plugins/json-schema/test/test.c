/* Native unit tests of the parser, the keywords and the hook, against a stubbed store.
 * Run by ../test.sh (gcc, with AddressSanitizer when available, so leaks fail the run). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../json.h"
#include "../plugin.h"
#include "../schema.h"

static int checks, failures;

#define CHECK(cond, ...)                                                                 \
    do {                                                                                 \
        checks++;                                                                        \
        if (!(cond)) {                                                                   \
            failures++;                                                                  \
            printf("failed %s:%d: ", __FILE__, __LINE__);                                \
            printf(__VA_ARGS__);                                                         \
            printf("\n");                                                                \
        }                                                                                \
    } while (0)

/* ---- the stubbed store: a table of leaf paths and their JSON ---- */

typedef struct {
    const char *path, *json;
} entry;

static const entry *store;

bool store_get(const char *path, char **json, size_t *len) {
    for (const entry *e = store; e && e->path; e++) {
        if (strcmp(e->path, path) == 0) {
            *len = strlen(e->json);
            *json = malloc(*len);
            memcpy(*json, e->json, *len); /* not NUL-terminated, like the host's */
            return true;
        }
    }
    return false;
}

/* Children of `path`; an object value is listed as a directory (`name/`), as herd does. */
char **store_list(const char *path, size_t *count) {
    char **names = malloc(64 * sizeof *names);
    size_t n = 0, len = strlen(path);
    for (const entry *e = store; e && e->path; e++) {
        const char *rest = e->path + len;
        if (strncmp(e->path, path, len) != 0 || rest[0] != '/' || strchr(rest + 1, '/')) continue;
        names[n] = malloc(strlen(rest) + 2);
        strcpy(names[n], rest + 1);
        if (e->json[0] == '{') strcat(names[n], "/");
        n++;
    }
    *count = n;
    return names;
}

void log_debug(const char *message) { (void)message; }

/* ---- the parser ---- */

static json_value *parse(const char *text) {
    char err[160];
    return json_parse(text, strlen(text), err, sizeof err);
}

static void parses(const char *text) {
    char err[160];
    json_value *v = json_parse(text, strlen(text), err, sizeof err);
    CHECK(v, "%s should parse: %s", text, err);
    json_free(v);
}

static void refuses(const char *text, size_t len, const char *why) {
    char err[160];
    json_value *v = json_parse(text, len, err, sizeof err);
    CHECK(!v, "%s should not parse", text);
    CHECK(!v && strstr(err, why), "%s: error \"%s\" should mention \"%s\"", text, err, why);
    json_free(v);
}
#define REFUSES(text, why) refuses(text, sizeof(text) - 1, why)

static char *nested(int depth) {
    char *s = malloc(2 * (size_t)depth + 1);
    memset(s, '[', (size_t)depth);
    memset(s + depth, ']', (size_t)depth);
    s[2 * depth] = '\0';
    return s;
}

static void test_parser(void) {
    const char *good[] = {"0", "-0", "1.5e10", "-1E-2", "12.25E+3", "true", "false", "null",
                          "[]", "{}", " [1, 2 ,3] ", "\"\"", "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"",
                          "{\"a\":{\"b\":[true,false,null,{}]}}", "\t\r\n 1 \n",
                          "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"", "1e400", NULL};
    for (int i = 0; good[i]; i++) parses(good[i]);

    REFUSES("", "end of input");
    REFUSES("  ", "end of input");
    REFUSES("01", "after the value");
    REFUSES("1.", "digit after '.'");
    REFUSES(".5", "unexpected character");
    REFUSES("-", "expected a digit");
    REFUSES("+1", "unexpected character");
    REFUSES("1e", "exponent");
    REFUSES("1e+", "exponent");
    REFUSES("NaN", "unexpected character");
    REFUSES("Infinity", "unexpected character");
    REFUSES("tru", "unexpected character");
    REFUSES("nul", "unexpected character");
    REFUSES("true false", "after the value");
    REFUSES("[1,]", "unexpected character");
    REFUSES("[1 2]", "expected ',' or ']'");
    REFUSES("[1", "end of input");
    REFUSES("{\"a\":1,}", "expected a string key");
    REFUSES("{a:1}", "expected a string key");
    REFUSES("{\"a\" 1}", "expected ':'");
    REFUSES("{\"a\"}", "expected ':'");
    REFUSES("{\"a\":1", "end of input");
    REFUSES("\"abc", "unterminated string");
    REFUSES("\"abc\\", "unterminated string");
    REFUSES("\"\\x\"", "invalid escape");
    REFUSES("\"\\u12\"", "invalid \\u escape");
    REFUSES("\"\\u12g4\"", "invalid \\u escape");
    REFUSES("\"\\ud800\"", "low surrogate");
    REFUSES("\"\\ud800\\u0041\"", "low surrogate");
    REFUSES("\"\\udc00\"", "lone low surrogate");
    REFUSES("\"tab\there\"", "control character");
    REFUSES("\"\xff\"", "invalid UTF-8");
    REFUSES("\"\xc0\xaf\"", "invalid UTF-8");         /* overlong */
    REFUSES("\"\xe0\x80\xaf\"", "invalid UTF-8");     /* overlong */
    REFUSES("\"\xed\xa0\x80\"", "invalid UTF-8");     /* a surrogate */
    REFUSES("\"\xf4\x90\x80\x80\"", "invalid UTF-8"); /* above U+10FFFF */
    REFUSES("\"\xc3\"", "invalid UTF-8");             /* cut short */
    REFUSES("[1,\0 2]", "unexpected character");     /* a NUL byte in the text */
    REFUSES("1 2", "byte 2");

    char *ok = nested(JSON_MAX_DEPTH), *deep = nested(JSON_MAX_DEPTH + 1);
    parses(ok);
    refuses(deep, strlen(deep), "nested too deeply");
    free(ok);
    free(deep);

    json_value *v = parse("\"\\u00e9\\u20AC\\ud83d\\ude00\\u0000x\"");
    CHECK(v && v->type == JSON_STRING && v->u.string.len == 11 &&
              memcmp(v->u.string.ptr, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\0x", 11) == 0,
          "\\u escapes decode to UTF-8");
    CHECK(v && json_utf8_length(v->u.string.ptr, v->u.string.len) == 5, "5 code points");
    json_free(v);

    v = parse("[1.50, -2e3, 7]");
    CHECK(v && v->u.array.len == 3, "three items");
    CHECK(v && strcmp(v->u.array.items[0]->u.number.text, "1.50") == 0, "number text kept");
    CHECK(v && v->u.array.items[1]->u.number.value == -2000, "-2e3");
    CHECK(v && !json_is_integer(v->u.array.items[0]) && json_is_integer(v->u.array.items[1]),
          "integers");
    json_free(v);

    v = parse("{\"a\":1,\"a\":2}");
    CHECK(v && json_get(v, "a")->u.number.value == 2, "the last duplicate key wins");
    json_free(v);

    const char *equal[][2] = {{"1", "1.0"}, {"{\"a\":1,\"b\":[2]}", "{\"b\":[2.0],\"a\":1}"},
                              {"\"x\"", "\"x\""}, {"null", "null"}, {NULL, NULL}};
    for (int i = 0; equal[i][0]; i++) {
        json_value *a = parse(equal[i][0]), *b = parse(equal[i][1]);
        CHECK(json_equal(a, b), "%s == %s", equal[i][0], equal[i][1]);
        json_free(a);
        json_free(b);
    }
    const char *differ[][2] = {{"1", "2"}, {"[1,2]", "[2,1]"}, {"{\"a\":1}", "{\"a\":1,\"b\":1}"},
                               {"true", "1"}, {"\"a\"", "\"a\\u0000\""}, {"0", "false"},
                               {NULL, NULL}};
    for (int i = 0; differ[i][0]; i++) {
        json_value *a = parse(differ[i][0]), *b = parse(differ[i][1]);
        CHECK(!json_equal(a, b), "%s != %s", differ[i][0], differ[i][1]);
        json_free(a);
        json_free(b);
    }
}

/* ---- the keywords ---- */

/* Validates `instance` against `schema` at base /app/db: NULL if valid, else the message. */
static char *run(const char *schema, const char *instance) {
    json_value *s = parse(schema), *v = parse(instance);
    if (!s || !v) {
        printf("test bug: %s or %s does not parse\n", schema, instance);
        exit(2);
    }
    char *msg = schema_check(s, "/schemas/t/schema");
    CHECK(!msg, "schema %s should be well formed: %s", schema, msg);
    if (!msg) msg = schema_validate(s, v, "/app/db");
    json_free(s);
    json_free(v);
    return msg;
}

static void valid(const char *schema, const char *instance) {
    char *msg = run(schema, instance);
    CHECK(!msg, "%s should be valid against %s: %s", instance, schema, msg);
    free(msg);
}

static void invalid(const char *schema, const char *instance, const char *expected) {
    char *msg = run(schema, instance);
    CHECK(msg && strcmp(msg, expected) == 0, "%s against %s: got \"%s\", expected \"%s\"",
          instance, schema, msg ? msg : "(valid)", expected);
    free(msg);
}

static void test_keywords(void) {
    valid("{}", "{\"anything\":[1]}");
    valid("true", "1");
    invalid("false", "1", "/app/db: no value is allowed here (the schema is false)");

    valid("{\"type\":\"string\"}", "\"x\"");
    invalid("{\"type\":\"string\"}", "5", "/app/db: expected string, got 5");
    valid("{\"type\":\"integer\"}", "5");
    valid("{\"type\":\"integer\"}", "5.0");
    invalid("{\"type\":\"integer\"}", "5.5", "/app/db: expected integer, got 5.5");
    valid("{\"type\":\"number\"}", "5.5");
    invalid("{\"type\":\"number\"}", "\"5\"", "/app/db: expected number, got \"5\"");
    valid("{\"type\":\"boolean\"}", "false");
    invalid("{\"type\":\"boolean\"}", "null", "/app/db: expected boolean, got null");
    valid("{\"type\":\"null\"}", "null");
    valid("{\"type\":\"object\"}", "{}");
    invalid("{\"type\":\"object\"}", "[]", "/app/db: expected object, got an array");
    valid("{\"type\":\"array\"}", "[]");
    invalid("{\"type\":\"array\"}", "{}", "/app/db: expected array, got an object");
    valid("{\"type\":[\"string\",\"null\"]}", "null");
    invalid("{\"type\":[\"string\",\"null\"]}", "1", "/app/db: expected string or null, got 1");

    valid("{\"required\":[\"a\"]}", "{\"a\":1}");
    valid("{\"required\":[\"a\"]}", "[]"); /* only objects */
    invalid("{\"required\":[\"a\",\"b\"]}", "{\"a\":1}",
            "/app/db: missing required property \"b\"");

    const char *port = "{\"properties\":{\"port\":{\"type\":\"integer\",\"minimum\":1,"
                       "\"maximum\":65535}}}";
    valid(port, "{\"port\":5432,\"other\":\"x\"}");
    invalid(port, "{\"port\":70000}", "/app/db/port: 70000 is greater than the maximum 65535");
    invalid(port, "{\"port\":0}", "/app/db/port: 0 is less than the minimum 1");
    invalid(port, "{\"port\":\"x\"}", "/app/db/port: expected integer, got \"x\"");
    invalid("{\"properties\":{\"a/b~\":{\"properties\":{\"c\":{\"type\":\"string\"}}}}}",
            "{\"a/b~\":{\"c\":1}}", "/app/db/a~1b~0/c: expected string, got 1");
    invalid("{\"properties\":{\"a\":false}}", "{\"a\":1}",
            "/app/db/a: no value is allowed here (the schema is false)");

    const char *closed = "{\"properties\":{\"a\":{}},\"additionalProperties\":false}";
    valid(closed, "{\"a\":1}");
    invalid(closed, "{\"a\":1,\"b\":2}",
            "/app/db: property \"b\" is not allowed (additionalProperties is false)");
    valid("{\"additionalProperties\":{\"type\":\"string\"}}", "{\"x\":\"y\"}");
    invalid("{\"properties\":{\"n\":{}},\"additionalProperties\":{\"type\":\"string\"}}",
            "{\"n\":1,\"x\":2}", "/app/db/x: expected string, got 2");

    const char *e = "{\"enum\":[1,\"a\",null,{\"k\":[1]}]}";
    valid(e, "1.0");
    valid(e, "{\"k\":[1]}");
    valid(e, "null");
    invalid(e, "2", "/app/db: 2 is not one of the enum values");
    invalid(e, "{\"k\":[2]}", "/app/db: an object is not one of the enum values");
    valid("{\"const\":{\"a\":1,\"b\":2}}", "{\"b\":2,\"a\":1}");
    invalid("{\"const\":{\"a\":1,\"b\":2}}", "{\"a\":1}",
            "/app/db: an object is not equal to the const value");
    invalid("{\"const\":\"x\"}", "\"y\"", "/app/db: \"y\" is not equal to the const value");

    valid("{\"exclusiveMinimum\":0}", "0.1");
    invalid("{\"exclusiveMinimum\":0}", "0", "/app/db: 0 is not greater than the exclusive minimum 0");
    valid("{\"exclusiveMaximum\":10}", "9.99");
    invalid("{\"exclusiveMaximum\":10}", "1e1",
            "/app/db: 1e1 is not less than the exclusive maximum 10");
    valid("{\"minimum\":5}", "\"abc\""); /* numeric keywords ignore other types */

    valid("{\"minLength\":2}", "\"\xc3\xa9\xc3\xa9\"");
    invalid("{\"minLength\":2}", "\"\xc3\xa9\"",
            "/app/db: \"\xc3\xa9\" is shorter than the minimum length 2");
    valid("{\"maxLength\":2}", "\"\xf0\x9f\x98\x80\xf0\x9f\x98\x80\""); /* 2 code points */
    invalid("{\"maxLength\":2}", "\"abc\"", "/app/db: \"abc\" is longer than the maximum length 2");
    invalid("{\"maxLength\":2}", "\"a\\nb\\\"\"",
            "/app/db: \"a\\nb\\\"\" is longer than the maximum length 2");
    invalid("{\"maxLength\":1}", "\"\\u0000\\u001f\\t\"",
            "/app/db: \"\\u0000\\u001f\\t\" is longer than the maximum length 1");
    invalid("{\"maxLength\":1}", "\"0123456789012345678901234567890123456789xyz\"",
            "/app/db: \"0123456789012345678901234567890123456789...\" is longer than the "
            "maximum length 1");

    valid("{\"pattern\":\"^[a-z]+$\"}", "\"abc\"");
    invalid("{\"pattern\":\"^[a-z]+$\"}", "\"ab1\"",
            "/app/db: \"ab1\" does not match the pattern \"^[a-z]+$\"");
    valid("{\"pattern\":\"b\"}", "\"abc\""); /* unanchored */
    valid("{\"pattern\":\"^(ab)+$\"}", "\"abab\"");
    invalid("{\"pattern\":\"^a{2,3}$\"}", "\"aaaa\"",
            "/app/db: \"aaaa\" does not match the pattern \"^a{2,3}$\"");
    valid("{\"pattern\":\"^.$\"}", "\"\xc3\xa9\""); /* . is one code point */
    valid("{\"pattern\":\"^[0-9]+(\\\\.[0-9]+)?$\"}", "\"1.5\"");
    invalid("{\"pattern\":\"^[0-9]+(\\\\.[0-9]+)?$\"}", "\"1x5\"",
            "/app/db: \"1x5\" does not match the pattern \"^[0-9]+(\\\\.[0-9]+)?$\"");

    const char *items = "{\"items\":{\"type\":\"integer\"},\"minItems\":1,\"maxItems\":3}";
    valid(items, "[1,2]");
    invalid(items, "[1,\"x\"]", "/app/db/1: expected integer, got \"x\"");
    invalid(items, "[]", "/app/db: the array has 0 items, fewer than the minimum 1");
    invalid(items, "[1,2,3,4]", "/app/db: the array has 4 items, more than the maximum 3");
    invalid("{\"items\":{\"items\":{\"enum\":[0]}}}", "[[0],[0,1]]",
            "/app/db/1/1: 1 is not one of the enum values");

    /* At the root of the store (base ""), the location of the root itself is "/". */
    json_value *s = parse("{\"type\":\"object\"}"), *v = parse("1");
    char *msg = schema_validate(s, v, "");
    CHECK(msg && strcmp(msg, "/: expected object, got 1") == 0, "root location: %s", msg);
    free(msg);
    json_free(s);
    json_free(v);
}

static void check_schema(const char *schema, const char *expected) {
    json_value *s = parse(schema);
    char *msg = schema_check(s, "/schemas/t/schema");
    CHECK(expected ? msg && strcmp(msg, expected) == 0 : !msg,
          "checking %s: got \"%s\", expected \"%s\"", schema, msg ? msg : "(well formed)",
          expected ? expected : "(well formed)");
    free(msg);
    json_free(s);
}

static void test_check(void) {
    check_schema("{\"$schema\":\"x\",\"title\":5,\"unknown\":{\"type\":5},\"const\":[1]}", NULL);
    check_schema("{\"type\":[\"string\",\"integer\"],\"required\":[],\"enum\":[],"
                 "\"properties\":{\"a\":true,\"b\":{\"items\":false}},\"additionalProperties\":{},"
                 "\"minimum\":-1.5,\"maximum\":1e3,\"exclusiveMinimum\":0,\"exclusiveMaximum\":9,"
                 "\"minLength\":0,\"maxLength\":3.0,\"minItems\":1,\"maxItems\":2,"
                 "\"pattern\":\"^[a-z]*$\"}", NULL);
    check_schema("5", "/schemas/t/schema: a schema must be an object or a boolean");
    check_schema("{\"type\":\"foo\"}", "/schemas/t/schema/type: unknown type \"foo\"");
    check_schema("{\"type\":[\"string\",\"bar\"]}",
                 "/schemas/t/schema/type/1: unknown type \"bar\"");
    check_schema("{\"type\":[\"string\",1]}", "/schemas/t/schema/type/1: must be a type name");
    check_schema("{\"type\":[]}",
                 "/schemas/t/schema/type: must be a type name or a non-empty array of type names");
    check_schema("{\"type\":5}",
                 "/schemas/t/schema/type: must be a type name or a non-empty array of type names");
    check_schema("{\"required\":\"a\"}", "/schemas/t/schema/required: must be an array of strings");
    check_schema("{\"required\":[1]}", "/schemas/t/schema/required: must be an array of strings");
    check_schema("{\"properties\":[]}", "/schemas/t/schema/properties: must be an object of schemas");
    check_schema("{\"properties\":{\"a\":{\"properties\":{\"b\":{\"minimum\":\"1\"}}}}}",
                 "/schemas/t/schema/properties/a/properties/b/minimum: must be a number");
    check_schema("{\"properties\":{\"a\":5}}",
                 "/schemas/t/schema/properties/a: a schema must be an object or a boolean");
    check_schema("{\"additionalProperties\":\"no\"}",
                 "/schemas/t/schema/additionalProperties: a schema must be an object or a boolean");
    check_schema("{\"items\":[{}]}",
                 "/schemas/t/schema/items: the array form of items is not supported: give one schema");
    check_schema("{\"items\":{\"type\":\"x\"}}", "/schemas/t/schema/items/type: unknown type \"x\"");
    check_schema("{\"enum\":5}", "/schemas/t/schema/enum: must be an array");
    check_schema("{\"maximum\":true}", "/schemas/t/schema/maximum: must be a number");
    check_schema("{\"exclusiveMaximum\":true}", "/schemas/t/schema/exclusiveMaximum: must be a number");
    check_schema("{\"minLength\":-1}", "/schemas/t/schema/minLength: must be a non-negative integer");
    check_schema("{\"maxLength\":1.5}", "/schemas/t/schema/maxLength: must be a non-negative integer");
    check_schema("{\"minItems\":\"2\"}", "/schemas/t/schema/minItems: must be a non-negative integer");
    check_schema("{\"pattern\":5}", "/schemas/t/schema/pattern: must be a string");
    check_schema("{\"pattern\":\"a\\u0000b\"}", "/schemas/t/schema/pattern: must not contain NUL");
    json_value *s = parse("{\"pattern\":\"(\"}");
    char *msg = schema_check(s, "/schemas/t/schema");
    CHECK(msg && strstr(msg, "/schemas/t/schema/pattern: does not compile as a POSIX extended "
                             "regular expression: "),
          "an unbalanced pattern: %s", msg);
    free(msg);
    json_free(s);
}

/* ---- the hook ---- */

static void hook(const entry *table, const char *path, bool has_value, const char *expected) {
    store = table;
    char *msg = check_change(path, has_value);
    CHECK(expected ? msg && strcmp(msg, expected) == 0 : !msg,
          "write to %s: got \"%s\", expected \"%s\"", path, msg ? msg : "(accepted)",
          expected ? expected : "(accepted)");
    free(msg);
}

#define APP_DB_SCHEMA                                                                         \
    "{\"guards\":\"/app/db\",\"schema\":{\"type\":\"object\",\"required\":[\"port\"],"        \
    "\"properties\":{\"port\":{\"type\":\"integer\",\"maximum\":65535}}}}"

static void test_hook(void) {
    const entry bad_port[] = {{"/schemas/app-db", APP_DB_SCHEMA},
                              {"/app/db", "{\"port\":70000}"},
                              {"/app/dbx", "{\"port\":70000}"},
                              {NULL, NULL}};
    const char *too_big = "/app/db/port: 70000 is greater than the maximum 65535 (schema app-db)";
    hook(bad_port, "/app/db/port", true, too_big); /* a descendant of the guarded path */
    hook(bad_port, "/app/db", true, too_big);
    hook(bad_port, "/app", true, too_big); /* an ancestor */
    hook(bad_port, "/", true, too_big);
    hook(bad_port, "/app/dbx", true, NULL); /* not /app/db, segment-wise */
    hook(bad_port, "/app/dbx/port", true, NULL);
    hook(bad_port, "/other", true, NULL);

    const entry good[] = {{"/schemas/app-db", APP_DB_SCHEMA},
                          {"/schemas/readme", "\"a leaf, not a schema doc\""},
                          {"/app/db", "{\"port\":5432,\"host\":\"db\"}"},
                          {NULL, NULL}};
    hook(good, "/app/db/port", true, NULL);
    hook(good, "/app/db/port", false, NULL);

    const entry deleted_port[] = {{"/schemas/app-db", APP_DB_SCHEMA},
                                  {"/app/db", "{\"host\":\"db\"}"},
                                  {NULL, NULL}};
    hook(deleted_port, "/app/db/port", false,
         "/app/db: missing required property \"port\" (schema app-db)");
    const entry no_value[] = {{"/schemas/app-db", APP_DB_SCHEMA}, {NULL, NULL}};
    hook(no_value, "/app/db", false, NULL); /* nothing left at the guarded path */
    hook(no_value, "/app/db/port", true, NULL);

    /* Writes of schema docs. */
    hook(good, "/schemas/app-db", true, NULL);
    hook(good, "/schemas/app-db/schema/properties/port/maximum", true, NULL);
    const entry bad_docs[] = {{"/schemas/a", "{\"guards\":\"app\",\"schema\":{}}"},
                              {"/schemas/b", "{\"guards\":\"/x\",\"schema\":{\"maximum\":\"1\"}}"},
                              {"/schemas/c", "{\"guards\":\"/x\"}"},
                              {"/schemas/d", "[1]"},
                              {"/schemas/e", "{\"schema\":{}}"},
                              {"/schemas/f", "{\"guards\":\"/x\",\"schema\":{\"pattern\":\"a\\\\\"}}"},
                              {"/schemas/g", "{\"guards\":\"/x\",\"schema\":true}"},
                              {NULL, NULL}};
    hook(bad_docs, "/schemas/a", true, "/schemas/a/guards: must be a path starting with /");
    hook(bad_docs, "/schemas/b/schema", true, "/schemas/b/schema/maximum: must be a number");
    hook(bad_docs, "/schemas/c/guards", true, "/schemas/c: missing \"schema\"");
    hook(bad_docs, "/schemas/d", true,
         "/schemas/d: a schema doc must be an object {\"guards\": \"/path\", \"schema\": {...}}");
    hook(bad_docs, "/schemas/e", true,
         "/schemas/e: missing \"guards\" (the path the schema applies to)");
    store = bad_docs;
    char *msg = check_change("/schemas/f", true);
    CHECK(msg && strstr(msg, "/schemas/f/schema/pattern: does not compile"), "f: %s", msg);
    free(msg);
    hook(bad_docs, "/schemas/g", true, "/schemas/g/schema: must be an object");
    hook(bad_docs, "/schemas", true, "/schemas/a/guards: must be a path starting with /");
    hook(bad_docs, "/schemas/a", false, NULL); /* deletes are accepted */
    hook(bad_docs, "/schemas/zzz", true, NULL); /* nothing there after the write */
    hook(bad_docs, "/y", true, NULL);           /* malformed docs guard nothing else */
    hook(bad_docs, "/x", true,
         "/schemas/b/schema/maximum: must be a number (schema b is invalid)");

    const entry root[] = {{"/schemas/root", "{\"guards\":\"/\",\"schema\":{\"properties\":"
                                            "{\"top\":{\"type\":\"string\"}}}}"},
                          {"/", "{\"top\":1}"},
                          {NULL, NULL}};
    hook(root, "/anything", true, "/top: expected string, got 1 (schema root)");
    const entry trailing[] = {{"/schemas/t", "{\"guards\":\"/app/\",\"schema\":{\"type\":\"object\"}}"},
                              {"/app", "5"},
                              {NULL, NULL}};
    hook(trailing, "/app/x", true, "/app: expected object, got 5 (schema t)");
}

int main(void) {
    test_parser();
    test_keywords();
    test_check();
    test_hook();
    if (failures) {
        printf("json-schema tests: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("json-schema tests: ok (%d checks)\n", checks);
    return 0;
}
