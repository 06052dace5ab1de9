/* JSON Schema keywords: checking a schema, validating a value against it. */
#ifndef HERD_SCHEMA_H
#define HERD_SCHEMA_H

#include "json.h"

/* Checks that `schema` is a well-formed schema (an object or a boolean): known keywords have
 * the right types and patterns compile; unknown keywords are ignored. Returns NULL, or a
 * malloc'd message "<base><pointer>: <problem>" (base: where the schema lives, for messages). */
char *schema_check(const json_value *schema, const char *base);

/* Validates `instance` against a schema that passed schema_check. Returns NULL if it is valid,
 * else a malloc'd message about the first failure: "<base><pointer>: <reason>". */
char *schema_validate(const json_value *schema, const json_value *instance, const char *base);

/* printf into a new malloc'd string (aborts when out of memory). */
char *msg_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
