"""Unit tests of validation.py, natively (no wasm): `python3 -m unittest` in this folder.

Most vectors are the C plugin's (plugins/json-schema/test/test.c), with the same expected
messages: the two plugins must behave the same.
"""

import json
import unittest

import validation


class TableStore:
    """The stubbed store of the C tests: a table of paths and their JSON text."""

    def __init__(self, table):
        self.table = dict(table)
        self.calls = []

    def get(self, path):
        self.calls.append(("get", path))
        return self.table.get(path)

    def list(self, path):
        """Children of `path`; an object value is listed as a directory (`name/`), as herd does."""
        self.calls.append(("list", path))
        names = []
        for key, text in self.table.items():
            rest = key[len(path) :]
            if key.startswith(path) and rest.startswith("/") and "/" not in rest[1:]:
                names.append(rest[1:] + ("/" if text.startswith("{") else ""))
        return sorted(names)


def run(schema, instance):
    """Validates `instance` against `schema` at base /app/db (both JSON text)."""
    s, v = validation.parse(schema), validation.parse(instance)
    problem = validation.schema_check(s, "/schemas/t/schema")
    if problem is not None:
        raise AssertionError(f"schema {schema} should be well formed: {problem}")
    return validation.schema_validate(s, v, "/app/db")


def hook(table, path, has_value=True, debug=None):
    return validation.check_change(path, has_value, TableStore(table), debug or (lambda m: None))


class Parser(unittest.TestCase):
    def test_numbers_keep_their_text(self):
        v = validation.parse("[1.50, -2e3, 7, -0]")
        self.assertEqual([n.text for n in v], ["1.50", "-2e3", "7", "-0"])
        self.assertFalse(validation.is_integer(v[0]))
        self.assertTrue(validation.is_integer(v[1]))
        self.assertFalse(validation.is_integer(validation.parse("1e400")))

    def test_nesting_limit(self):
        validation.parse("[" * 64 + "]" * 64)
        with self.assertRaises(validation.Invalid) as refused:
            validation.parse("[" * 65 + "]" * 65)
        self.assertEqual(str(refused.exception), "invalid JSON at byte 64: nested too deeply (limit 64)")
        with self.assertRaises(validation.Invalid) as refused:
            validation.parse('{"\u00e9":' + "[" * 64 + "]" * 64 + "}")
        self.assertEqual(str(refused.exception), "invalid JSON at byte 69: nested too deeply (limit 64)")

    def test_brackets_inside_strings_do_not_count(self):
        text = json.dumps({'a"[': ["]]\\", "{" * 200, '\\"[[['], "b": "[" * 500})
        self.assertEqual(validation.parse(text), json.loads(text))

    def test_the_last_duplicate_key_wins(self):
        self.assertEqual(validation.parse('{"a":1,"a":2}')["a"], 2)

    def test_equality(self):
        for a, b in [("1", "1.0"), ('{"a":1,"b":[2]}', '{"b":[2.0],"a":1}'), ('"x"', '"x"'), ("null", "null")]:
            self.assertTrue(validation.equal(validation.parse(a), validation.parse(b)), (a, b))
        for a, b in [
            ("1", "2"),
            ("[1,2]", "[2,1]"),
            ('{"a":1}', '{"a":1,"b":1}'),
            ("true", "1"),
            ('"a"', '"a\\u0000"'),
            ("0", "false"),
        ]:
            self.assertFalse(validation.equal(validation.parse(a), validation.parse(b)), (a, b))

    def test_numbers_compare_as_doubles_like_the_c_plugin(self):
        self.assertTrue(validation.equal(validation.parse("9007199254740993"), validation.parse("9007199254740992")))


class Keywords(unittest.TestCase):
    def valid(self, schema, instance):
        self.assertIsNone(run(schema, instance), f"{instance} against {schema}")

    def invalid(self, schema, instance, expected):
        self.assertEqual(run(schema, instance), expected)

    def test_boolean_schemas(self):
        self.valid("{}", '{"anything":[1]}')
        self.valid("true", "1")
        self.invalid("false", "1", "/app/db: no value is allowed here (the schema is false)")

    def test_type(self):
        self.valid('{"type":"string"}', '"x"')
        self.invalid('{"type":"string"}', "5", "/app/db: expected string, got 5")
        self.valid('{"type":"integer"}', "5")
        self.valid('{"type":"integer"}', "5.0")
        self.invalid('{"type":"integer"}', "5.5", "/app/db: expected integer, got 5.5")
        self.valid('{"type":"number"}', "5.5")
        self.invalid('{"type":"number"}', '"5"', '/app/db: expected number, got "5"')
        self.valid('{"type":"boolean"}', "false")
        self.invalid('{"type":"boolean"}', "null", "/app/db: expected boolean, got null")
        self.valid('{"type":"null"}', "null")
        self.valid('{"type":"object"}', "{}")
        self.invalid('{"type":"object"}', "[]", "/app/db: expected object, got an array")
        self.valid('{"type":"array"}', "[]")
        self.invalid('{"type":"array"}', "{}", "/app/db: expected array, got an object")
        self.valid('{"type":["string","null"]}', "null")
        self.invalid('{"type":["string","null"]}', "1", "/app/db: expected string or null, got 1")

    def test_booleans_are_not_numbers(self):
        self.invalid('{"type":"number"}', "true", "/app/db: expected number, got true")
        self.invalid('{"type":"integer"}', "false", "/app/db: expected integer, got false")
        self.valid('{"maximum":0}', "true")

    def test_required(self):
        self.valid('{"required":["a"]}', '{"a":1}')
        self.valid('{"required":["a"]}', "[]")  # only objects
        self.invalid('{"required":["a","b"]}', '{"a":1}', '/app/db: missing required property "b"')

    def test_properties(self):
        port = '{"properties":{"port":{"type":"integer","minimum":1,"maximum":65535}}}'
        self.valid(port, '{"port":5432,"other":"x"}')
        self.invalid(port, '{"port":70000}', "/app/db/port: 70000 is greater than the maximum 65535")
        self.invalid(port, '{"port":0}', "/app/db/port: 0 is less than the minimum 1")
        self.invalid(port, '{"port":"x"}', '/app/db/port: expected integer, got "x"')
        self.invalid(
            '{"properties":{"a/b~":{"properties":{"c":{"type":"string"}}}}}',
            '{"a/b~":{"c":1}}',
            "/app/db/a~1b~0/c: expected string, got 1",
        )
        self.invalid('{"properties":{"a":false}}', '{"a":1}', "/app/db/a: no value is allowed here (the schema is false)")

    def test_additional_properties(self):
        closed = '{"properties":{"a":{}},"additionalProperties":false}'
        self.valid(closed, '{"a":1}')
        self.invalid(closed, '{"a":1,"b":2}', '/app/db: property "b" is not allowed (additionalProperties is false)')
        self.valid('{"additionalProperties":{"type":"string"}}', '{"x":"y"}')
        self.invalid(
            '{"properties":{"n":{}},"additionalProperties":{"type":"string"}}',
            '{"n":1,"x":2}',
            "/app/db/x: expected string, got 2",
        )
        self.valid('{"properties":{"a":{}},"additionalProperties":true}', '{"a":1,"b":2}')

    def test_enum_and_const(self):
        e = '{"enum":[1,"a",null,{"k":[1]}]}'
        self.valid(e, "1.0")
        self.valid(e, '{"k":[1]}')
        self.valid(e, "null")
        self.invalid(e, "2", "/app/db: 2 is not one of the enum values")
        self.invalid(e, '{"k":[2]}', "/app/db: an object is not one of the enum values")
        self.invalid('{"enum":[0]}', "false", "/app/db: false is not one of the enum values")
        self.valid('{"const":{"a":1,"b":2}}', '{"b":2,"a":1}')
        self.invalid('{"const":{"a":1,"b":2}}', '{"a":1}', "/app/db: an object is not equal to the const value")
        self.invalid('{"const":"x"}', '"y"', '/app/db: "y" is not equal to the const value')
        self.invalid('{"const":1}', "true", "/app/db: true is not equal to the const value")

    def test_numbers(self):
        self.valid('{"exclusiveMinimum":0}', "0.1")
        self.invalid('{"exclusiveMinimum":0}', "0", "/app/db: 0 is not greater than the exclusive minimum 0")
        self.valid('{"exclusiveMaximum":10}', "9.99")
        self.invalid('{"exclusiveMaximum":10}', "1e1", "/app/db: 1e1 is not less than the exclusive maximum 10")
        self.valid('{"minimum":5}', '"abc"')  # numeric keywords ignore other types
        self.invalid('{"maximum":5.0E2}', "1e3", "/app/db: 1e3 is greater than the maximum 5.0E2")
        self.valid('{"minimum":1.5}', "1.5")

    def test_strings(self):
        self.valid('{"minLength":2}', '"\u00e9\u00e9"')
        self.invalid('{"minLength":2}', '"\u00e9"', '/app/db: "\u00e9" is shorter than the minimum length 2')
        self.valid('{"maxLength":2}', '"\U0001F600\U0001F600"')  # 2 code points
        self.invalid('{"maxLength":2}', '"abc"', '/app/db: "abc" is longer than the maximum length 2')
        self.invalid('{"maxLength":2}', '"a\\nb\\""', '/app/db: "a\\nb\\"" is longer than the maximum length 2')
        self.invalid(
            '{"maxLength":1}',
            '"\\u0000\\u001f\\t"',
            '/app/db: "\\u0000\\u001f\\t" is longer than the maximum length 1',
        )
        self.invalid(
            '{"maxLength":1}',
            '"0123456789012345678901234567890123456789xyz"',
            '/app/db: "0123456789012345678901234567890123456789..." is longer than the maximum length 1',
        )
        self.valid('{"minLength":5}', "12")  # only strings

    def test_patterns(self):
        self.valid('{"pattern":"^[a-z]+$"}', '"abc"')
        self.invalid('{"pattern":"^[a-z]+$"}', '"ab1"', '/app/db: "ab1" does not match the pattern "^[a-z]+$"')
        self.valid('{"pattern":"b"}', '"abc"')  # unanchored
        self.valid('{"pattern":"^(ab)+$"}', '"abab"')
        self.invalid('{"pattern":"^a{2,3}$"}', '"aaaa"', '/app/db: "aaaa" does not match the pattern "^a{2,3}$"')
        self.valid('{"pattern":"^.$"}', '"\u00e9"')  # . is one code point
        self.valid('{"pattern":"^[0-9]+(\\\\.[0-9]+)?$"}', '"1.5"')
        self.invalid(
            '{"pattern":"^[0-9]+(\\\\.[0-9]+)?$"}',
            '"1x5"',
            '/app/db: "1x5" does not match the pattern "^[0-9]+(\\\\.[0-9]+)?$"',
        )
        self.valid('{"pattern":"^a$"}', '"a\\u0000b"')  # matched up to the first NUL, as in C
        self.valid('{"pattern":"^x"}', "5")  # only strings

    def test_arrays(self):
        items = '{"items":{"type":"integer"},"minItems":1,"maxItems":3}'
        self.valid(items, "[1,2]")
        self.invalid(items, '[1,"x"]', '/app/db/1: expected integer, got "x"')
        self.invalid(items, "[]", "/app/db: the array has 0 items, fewer than the minimum 1")
        self.invalid(items, "[1,2,3,4]", "/app/db: the array has 4 items, more than the maximum 3")
        self.invalid('{"items":{"items":{"enum":[0]}}}', "[[0],[0,1]]", "/app/db/1/1: 1 is not one of the enum values")
        self.valid('{"items":false}', "[]")
        self.invalid('{"items":false}', '["x"]', "/app/db/0: no value is allowed here (the schema is false)")

    def test_root_location(self):
        s, v = validation.parse('{"type":"object"}'), validation.parse("1")
        self.assertEqual(validation.schema_validate(s, v, ""), "/: expected object, got 1")

    def test_first_failure_in_keyword_order(self):
        self.invalid('{"maximum":1,"type":"string"}', "5", "/app/db: expected string, got 5")
        self.invalid(
            '{"properties":{"a":{"maximum":1}},"required":["z"]}',
            '{"a":5}',
            '/app/db: missing required property "z"',
        )
        self.invalid('{"properties":{"a":{"maximum":1},"b":{"maximum":1}}}', '{"b":5,"a":5}', "/app/db/b: 5 is greater than the maximum 1")


class SchemaChecks(unittest.TestCase):
    def check_schema(self, schema, expected):
        self.assertEqual(validation.schema_check(validation.parse(schema), "/schemas/t/schema"), expected)

    def test_well_formed(self):
        self.check_schema('{"$schema":"x","title":5,"unknown":{"type":5},"const":[1]}', None)
        self.check_schema(
            '{"type":["string","integer"],"required":[],"enum":[],'
            '"properties":{"a":true,"b":{"items":false}},"additionalProperties":{},'
            '"minimum":-1.5,"maximum":1e3,"exclusiveMinimum":0,"exclusiveMaximum":9,'
            '"minLength":0,"maxLength":3.0,"minItems":1,"maxItems":2,'
            '"pattern":"^[a-z]*$"}',
            None,
        )

    def test_malformed(self):
        cases = [
            ("5", "/schemas/t/schema: a schema must be an object or a boolean"),
            ('{"type":"foo"}', '/schemas/t/schema/type: unknown type "foo"'),
            ('{"type":["string","bar"]}', '/schemas/t/schema/type/1: unknown type "bar"'),
            ('{"type":["string",1]}', "/schemas/t/schema/type/1: must be a type name"),
            ('{"type":[]}', "/schemas/t/schema/type: must be a type name or a non-empty array of type names"),
            ('{"type":5}', "/schemas/t/schema/type: must be a type name or a non-empty array of type names"),
            ('{"required":"a"}', "/schemas/t/schema/required: must be an array of strings"),
            ('{"required":[1]}', "/schemas/t/schema/required: must be an array of strings"),
            ('{"properties":[]}', "/schemas/t/schema/properties: must be an object of schemas"),
            (
                '{"properties":{"a":{"properties":{"b":{"minimum":"1"}}}}}',
                "/schemas/t/schema/properties/a/properties/b/minimum: must be a number",
            ),
            ('{"properties":{"a":5}}', "/schemas/t/schema/properties/a: a schema must be an object or a boolean"),
            (
                '{"additionalProperties":"no"}',
                "/schemas/t/schema/additionalProperties: a schema must be an object or a boolean",
            ),
            ('{"items":[{}]}', "/schemas/t/schema/items: the array form of items is not supported: give one schema"),
            ('{"items":{"type":"x"}}', '/schemas/t/schema/items/type: unknown type "x"'),
            ('{"enum":5}', "/schemas/t/schema/enum: must be an array"),
            ('{"maximum":true}', "/schemas/t/schema/maximum: must be a number"),
            ('{"exclusiveMaximum":true}', "/schemas/t/schema/exclusiveMaximum: must be a number"),
            ('{"minimum":"1"}', "/schemas/t/schema/minimum: must be a number"),
            ('{"exclusiveMinimum":null}', "/schemas/t/schema/exclusiveMinimum: must be a number"),
            ('{"minLength":-1}', "/schemas/t/schema/minLength: must be a non-negative integer"),
            ('{"maxLength":1.5}', "/schemas/t/schema/maxLength: must be a non-negative integer"),
            ('{"minItems":"2"}', "/schemas/t/schema/minItems: must be a non-negative integer"),
            ('{"maxItems":false}', "/schemas/t/schema/maxItems: must be a non-negative integer"),
            ('{"pattern":5}', "/schemas/t/schema/pattern: must be a string"),
            ('{"pattern":"a\\u0000b"}', "/schemas/t/schema/pattern: must not contain NUL"),
        ]
        for schema, expected in cases:
            with self.subTest(schema):
                self.check_schema(schema, expected)

    def test_an_unbalanced_pattern(self):
        problem = validation.schema_check(validation.parse('{"pattern":"("}'), "/schemas/t/schema")
        self.assertTrue(problem.startswith("/schemas/t/schema/pattern: does not compile as a regular expression: "), problem)

    def test_keywords_are_checked_in_the_schema_order(self):
        self.check_schema('{"minimum":"x","type":5}', "/schemas/t/schema/minimum: must be a number")
        self.check_schema('{"type":5,"minimum":"x"}', "/schemas/t/schema/type: must be a type name or a non-empty array of type names")


APP_DB_SCHEMA = (
    '{"guards":"/app/db","schema":{"type":"object","required":["port"],'
    '"properties":{"port":{"type":"integer","maximum":65535}}}}'
)


class Hook(unittest.TestCase):
    def test_guarded_paths(self):
        bad_port = {"/schemas/app-db": APP_DB_SCHEMA, "/app/db": '{"port":70000}', "/app/dbx": '{"port":70000}'}
        too_big = "/app/db/port: 70000 is greater than the maximum 65535 (schema app-db)"
        self.assertEqual(hook(bad_port, "/app/db/port"), too_big)  # a descendant of the guarded path
        self.assertEqual(hook(bad_port, "/app/db"), too_big)
        self.assertEqual(hook(bad_port, "/app"), too_big)  # an ancestor
        self.assertEqual(hook(bad_port, "/"), too_big)
        self.assertIsNone(hook(bad_port, "/app/dbx"))  # not /app/db, segment-wise
        self.assertIsNone(hook(bad_port, "/app/dbx/port"))
        self.assertIsNone(hook(bad_port, "/other"))

    def test_valid_writes_and_deletes(self):
        good = {
            "/schemas/app-db": APP_DB_SCHEMA,
            "/schemas/readme": '"a leaf, not a schema doc"',
            "/app/db": '{"port":5432,"host":"db"}',
        }
        self.assertIsNone(hook(good, "/app/db/port"))
        self.assertIsNone(hook(good, "/app/db/port", has_value=False))
        self.assertIsNone(hook(good, "/schemas/app-db"))
        self.assertIsNone(hook(good, "/schemas/app-db/schema/properties/port/maximum"))

    def test_a_delete_that_breaks_the_schema_is_refused(self):
        deleted_port = {"/schemas/app-db": APP_DB_SCHEMA, "/app/db": '{"host":"db"}'}
        self.assertEqual(
            hook(deleted_port, "/app/db/port", has_value=False),
            '/app/db: missing required property "port" (schema app-db)',
        )
        no_value = {"/schemas/app-db": APP_DB_SCHEMA}
        self.assertIsNone(hook(no_value, "/app/db", has_value=False))  # nothing left at the guarded path
        self.assertIsNone(hook(no_value, "/app/db/port"))

    def test_writes_of_schema_docs(self):
        bad_docs = {
            "/schemas/a": '{"guards":"app","schema":{}}',
            "/schemas/b": '{"guards":"/x","schema":{"maximum":"1"}}',
            "/schemas/c": '{"guards":"/x"}',
            "/schemas/d": "[1]",
            "/schemas/e": '{"schema":{}}',
            "/schemas/f": '{"guards":"/x","schema":{"pattern":"a\\\\"}}',
            "/schemas/g": '{"guards":"/x","schema":true}',
        }
        self.assertEqual(hook(bad_docs, "/schemas/a"), "/schemas/a/guards: must be a path starting with /")
        self.assertEqual(hook(bad_docs, "/schemas/b/schema"), "/schemas/b/schema/maximum: must be a number")
        self.assertEqual(hook(bad_docs, "/schemas/c/guards"), '/schemas/c: missing "schema"')
        self.assertEqual(
            hook(bad_docs, "/schemas/d"),
            '/schemas/d: a schema doc must be an object {"guards": "/path", "schema": {...}}',
        )
        self.assertEqual(hook(bad_docs, "/schemas/e"), '/schemas/e: missing "guards" (the path the schema applies to)')
        self.assertIn("/schemas/f/schema/pattern: does not compile", hook(bad_docs, "/schemas/f"))
        self.assertEqual(hook(bad_docs, "/schemas/g"), "/schemas/g/schema: must be an object")
        self.assertEqual(hook(bad_docs, "/schemas"), "/schemas/a/guards: must be a path starting with /")
        self.assertIsNone(hook(bad_docs, "/schemas/a", has_value=False))  # deletes are accepted
        self.assertIsNone(hook(bad_docs, "/schemas/zzz"))  # nothing there after the write
        self.assertIsNone(hook(bad_docs, "/y"))  # malformed docs guard nothing else
        self.assertEqual(hook(bad_docs, "/x"), "/schemas/b/schema/maximum: must be a number (schema b is invalid)")

    def test_malformed_docs_guarding_nothing_here_are_logged(self):
        logged = []
        bad_docs = {"/schemas/a": '{"guards":"app","schema":{}}', "/schemas/b": '{"guards":"/x","schema":5}'}
        self.assertIsNone(hook(bad_docs, "/y", debug=logged.append))
        self.assertEqual(
            logged,
            [
                "ignoring a malformed schema doc: /schemas/a/guards: must be a path starting with /",
                "ignoring a malformed schema doc: /schemas/b/schema: must be an object",
            ],
        )

    def test_root_and_trailing_slash_guards(self):
        root = {"/schemas/root": '{"guards":"/","schema":{"properties":{"top":{"type":"string"}}}}', "/": '{"top":1}'}
        self.assertEqual(hook(root, "/anything"), "/top: expected string, got 1 (schema root)")
        trailing = {"/schemas/t": '{"guards":"/app/","schema":{"type":"object"}}', "/app": "5"}
        self.assertEqual(hook(trailing, "/app/x"), "/app: expected object, got 5 (schema t)")

    def test_a_new_schema_does_not_recheck_stored_data(self):
        table = {"/schemas/app-db": APP_DB_SCHEMA, "/app/db": '{"port":70000}'}
        self.assertIsNone(hook(table, "/schemas/app-db"))

    def test_first_doc_in_list_order_reports(self):
        table = {
            "/schemas/b": '{"guards":"/v","schema":{"maximum":2}}',
            "/schemas/a": '{"guards":"/v","schema":{"maximum":1}}',
            "/v": "5",
        }
        self.assertEqual(hook(table, "/v"), "/v: 5 is greater than the maximum 1 (schema a)")

    def test_reads(self):
        store = TableStore({"/schemas/app-db": APP_DB_SCHEMA, "/app/db": '{"port":1}', "/other": "1"})
        self.assertIsNone(validation.check_change("/other", True, store))
        self.assertEqual(store.calls, [("list", "/schemas"), ("get", "/schemas/app-db")])

    def test_too_deep_values(self):
        table = {"/schemas/s": '{"guards":"/v","schema":{}}', "/v": "[" * 65 + "]" * 65}
        self.assertEqual(hook(table, "/v"), "/v: invalid JSON at byte 64: nested too deeply (limit 64)")
        table["/v"] = "[" * 64 + "]" * 64
        self.assertIsNone(hook(table, "/v"))

    def test_messages_are_valid_utf8(self):
        table = {"/schemas/s": '{"guards":"/v","schema":{"type":"number"}}', "/v": '"\\ud800"'}
        self.assertEqual(hook(table, "/v"), '/v: expected number, got "?" (schema s)')


if __name__ == "__main__":
    unittest.main()
