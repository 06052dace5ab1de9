"""JSON Schema checks for herd writes: the json-schema-py plugin's logic, with no wasm in it.

The same behaviour and messages as the C plugin (plugins/json-schema: plugin.c, schema.c), in
pure Python; test_json_schema.py runs the C plugin's test vectors against this module.
`check_change` takes the written path, whether the write has a value (False for a delete), a
`store` object with `get(path)` and `list(path)` (the plugin's `store` import, or a stub in the
tests) and a `debug` callable for the log. The hook in app.py is a thin wrapper around it.
Invariant: this module knows nothing of componentize-py or the generated bindings.

One difference is deliberate: `pattern` is a Python regular expression matched with
`re.search`, where the C plugin uses POSIX extended regular expressions. Both are unanchored;
common patterns (`^[a-z0-9-]+$`, `\\.`, `{2,3}`, groups, alternation) mean the same in both.
"""

import json
import re

# Where schema docs live: /schemas/<name> = {"guards": "/app/db", "schema": {...}}.
SCHEMAS = "/schemas"

TYPE_NAMES = ("null", "boolean", "object", "array", "number", "string", "integer")

NUMBER_LIMITS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
COUNTS = ("minLength", "maxLength", "minItems", "maxItems")

# Arrays and objects nest at most this deep, as in the C plugin's parser; deeper JSON is refused
# before parsing (CPython's parser recurses on the C stack, and in wasm it exhausts the stack, a
# trap, before Python's recursion check fires).
MAX_DEPTH = 64
STRING = re.compile(r'"(?:[^"\\]+|\\.)*"')
BRACKETS = re.compile(r"[][{}]")
TOKENS = re.compile(r'"(?:[^"\\]+|\\.)*"|[][{}]')

MISSING = object()  # a keyword or member that is absent (JSON null is None)


def check_change(path, has_value, store, debug=lambda message: None):
    """None to accept a write to `path`, or the message that refuses it."""
    message = None
    if has_value and (covers(SCHEMAS, path) or covers(path, SCHEMAS)):
        # A write at, under or above /schemas: the docs it touches must be well formed.
        # Deletes there are always accepted.
        message = check_schema_docs(path, store)
    if message is None:
        for entry in store.list(SCHEMAS):
            message = check_guard(path, entry, store, debug)
            if message is not None:
                break
    if message is None:
        return None
    # A lone surrogate cannot cross the component boundary in a string.
    return message.encode("utf-8", "replace").decode("utf-8")


def covers(a, b):
    """Whether path `a` is `b` or an ancestor of `b`, segment-wise (/app/db does not cover
    /app/dbx). A trailing `/` on `a` is ignored; `/` covers every path."""
    a = trim(a)
    if a == "/":
        return True
    return b == a or b.startswith(a + "/")


def trim(path):
    """`path` without trailing slashes, but `/` stays `/`."""
    end = len(path)
    while end > 1 and path[end - 1] == "/":
        end -= 1
    return path[:end]


# ---- the store's JSON ----


class Int(int):
    """A JSON integer that remembers its text, for messages."""

    def __new__(cls, text):
        number = super().__new__(cls, text)
        number.text = text
        return number


class Float(float):
    """A JSON number with a fraction or exponent that remembers its text (1e3, 0.50)."""

    def __new__(cls, text):
        number = super().__new__(cls, text)
        number.text = text
        return number


class Invalid(ValueError):
    """JSON the C plugin's parser refuses; the message is the parser's."""


def parse(text):
    """The JSON value of `text`, numbers remembering their text; raises Invalid."""
    if too_deep(BRACKETS.findall(STRING.sub("", text))):
        depth = 0
        for token in TOKENS.finditer(text):
            if token.group() in ("[", "{"):
                if depth == MAX_DEPTH:
                    at = len(text[: token.start()].encode("utf-8", "surrogatepass"))
                    raise Invalid(f"invalid JSON at byte {at}: nested too deeply (limit {MAX_DEPTH})")
                depth += 1
            elif token.group() in ("]", "}"):
                depth -= 1
    try:
        return json.loads(text, parse_int=Int, parse_float=Float)
    except json.JSONDecodeError as error:
        raise Invalid(f"invalid JSON at byte {error.pos}: {error.msg}") from None


def too_deep(brackets):
    depth = 0
    for bracket in brackets:
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def get_json(path, store):
    """(found, value, message): the value at `path`, or found False (then a message if the
    value does not parse)."""
    text = store.get(path)
    if text is None:
        return False, None, None
    try:
        return True, parse(text), None
    except Invalid as invalid:
        return False, None, f"{path}: {invalid}"


# ---- schema docs ----


def read_doc(doc, doc_path):
    """(message, guards, schema) for the doc at `doc_path`: message None if it is well formed;
    guards whenever `guards` is a usable path; schema only when the whole doc is well formed."""
    if not isinstance(doc, dict):
        return (
            f'{doc_path}: a schema doc must be an object {{"guards": "/path", "schema": {{...}}}}',
            None,
            None,
        )
    guards = doc.get("guards", MISSING)
    if guards is MISSING:
        return f'{doc_path}: missing "guards" (the path the schema applies to)', None, None
    if not isinstance(guards, str) or not guards.startswith("/") or "\0" in guards:
        return f"{doc_path}/guards: must be a path starting with /", None, None
    schema = doc.get("schema", MISSING)
    if schema is MISSING:
        return f'{doc_path}: missing "schema"', guards, None
    if not isinstance(schema, dict):
        return f"{doc_path}/schema: must be an object", guards, None
    message = schema_check(schema, f"{doc_path}/schema")
    return message, guards, (schema if message is None else None)


def check_doc(name, store):
    """The problem with the doc /schemas/<name> as it is after the write, or None."""
    doc_path = f"{SCHEMAS}/{name.rstrip('/')}"
    found, doc, message = get_json(doc_path, store)
    if found:
        message = read_doc(doc, doc_path)[0]
    return message


def check_schema_docs(path, store):
    if covers(path, SCHEMAS):  # `/` or `/schemas` itself: every doc
        for name in store.list(SCHEMAS):
            message = check_doc(name, store)
            if message is not None:
                return message
        return None
    # A write inside one doc (/schemas/app-db/schema/...) checks that whole doc.
    return check_doc(path[len(SCHEMAS) + 1 :].split("/", 1)[0], store)


def validate_guarded(guards, schema, name, store):
    """Validates the value at `guards` (if any) against `schema`."""
    guarded = trim(guards)
    found, value, message = get_json(guarded, store)
    if found:
        failure = schema_validate(schema, value, "" if guarded == "/" else guarded)
        if failure is not None:
            message = f"{failure} (schema {name})"
    return message


def check_guard(path, entry, store, debug):
    """Applies the doc listed as `entry` under /schemas if it guards a path related to the
    written `path` (the same, an ancestor or a descendant)."""
    name = entry.rstrip("/")
    if not name:
        return None
    doc_path = f"{SCHEMAS}/{name}"
    found, doc, message = get_json(doc_path, store)
    if found:
        bad, guards, schema = read_doc(doc, doc_path)
        if guards is not None and (covers(guards, path) or covers(path, guards)):
            # A broken schema guarding this path refuses the write rather than let it by.
            if bad is not None:
                message = f"{bad} (schema {name} is invalid)"
            else:
                message = validate_guarded(guards, schema, name, store)
        elif bad is not None:
            debug(f"ignoring a malformed schema doc: {bad}")
    return message


# ---- checking schemas ----


def schema_check(schema, base):
    """None if `schema` is well formed (an object or a boolean; known keywords with the right
    types, patterns that compile; unknown keywords ignored), else "<base><pointer>: <problem>"."""
    return check(schema, base, "")


def failure(base, where, reason):
    return f"{base}{where or ('' if base else '/')}: {reason}"


def check(schema, base, where):
    if isinstance(schema, bool):
        return None
    if not isinstance(schema, dict):
        return failure(base, where, "a schema must be an object or a boolean")
    for key, value in schema.items():
        message = check_keyword(key, value, base, f"{where}/{escape(key)}")
        if message is not None:
            return message
    return None


def check_keyword(key, value, base, where):
    if key == "type":
        if isinstance(value, str):
            if value in TYPE_NAMES:
                return None
            return failure(base, where, f"unknown type {describe(value)}")
        if not isinstance(value, list) or not value:
            return failure(base, where, "must be a type name or a non-empty array of type names")
        for index, name in enumerate(value):
            if not (isinstance(name, str) and name in TYPE_NAMES):
                if isinstance(name, str):
                    return failure(base, f"{where}/{index}", f"unknown type {describe(name)}")
                return failure(base, f"{where}/{index}", "must be a type name")
        return None
    if key == "required":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return failure(base, where, "must be an array of strings")
        return None
    if key == "properties":
        if not isinstance(value, dict):
            return failure(base, where, "must be an object of schemas")
        for name, sub in value.items():
            message = check(sub, base, f"{where}/{escape(name)}")
            if message is not None:
                return message
        return None
    if key in ("additionalProperties", "items"):
        if key == "items" and isinstance(value, list):
            return failure(base, where, "the array form of items is not supported: give one schema")
        return check(value, base, where)
    if key == "enum":
        return None if isinstance(value, list) else failure(base, where, "must be an array")
    if key in NUMBER_LIMITS:
        return None if is_number(value) else failure(base, where, "must be a number")
    if key in COUNTS:
        if is_integer(value) and number(value) >= 0:
            return None
        return failure(base, where, "must be a non-negative integer")
    if key == "pattern":
        if not isinstance(value, str):
            return failure(base, where, "must be a string")
        if "\0" in value:
            return failure(base, where, "must not contain NUL")
        try:
            re.compile(value)
        except re.error as error:
            return failure(base, where, f"does not compile as a regular expression: {error}")
        return None
    return None  # unknown keywords are ignored; `const` takes any value


# ---- validating values ----


def schema_validate(schema, value, base):
    """None if `value` is valid against the well-formed `schema`, else a message about the
    first failure: "<base><pointer>: <reason>". Keywords are checked in this order: type, enum,
    const, then by the value's type: minimum, maximum, exclusiveMinimum, exclusiveMaximum;
    minLength, maxLength, pattern; minItems, maxItems, items; required, then each member in the
    value's order (properties, else additionalProperties)."""
    return validate(schema, value, base, "")


def validate(schema, value, base, where):
    if isinstance(schema, bool):
        if schema:
            return None
        return failure(base, where, "no value is allowed here (the schema is false)")
    kind = schema.get("type", MISSING)
    if kind is not MISSING:
        names = [kind] if isinstance(kind, str) else kind
        if not any(type_matches(name, value) for name in names):
            return failure(base, where, f"expected {' or '.join(names)}, got {describe(value)}")
    options = schema.get("enum", MISSING)
    if options is not MISSING and not any(equal(option, value) for option in options):
        return failure(base, where, f"{describe(value)} is not one of the enum values")
    const = schema.get("const", MISSING)
    if const is not MISSING and not equal(const, value):
        return failure(base, where, f"{describe(value)} is not equal to the const value")
    if is_number(value):
        return validate_number(schema, value, base, where)
    if isinstance(value, str):
        return validate_string(schema, value, base, where)
    if isinstance(value, list):
        return validate_array(schema, value, base, where)
    if isinstance(value, dict):
        return validate_object(schema, value, base, where)
    return None


def validate_number(schema, value, base, where):
    x = number(value)
    limit = schema.get("minimum")
    if limit is not None and x < number(limit):
        return failure(base, where, f"{describe(value)} is less than the minimum {text(limit)}")
    limit = schema.get("maximum")
    if limit is not None and x > number(limit):
        return failure(base, where, f"{describe(value)} is greater than the maximum {text(limit)}")
    limit = schema.get("exclusiveMinimum")
    if limit is not None and x <= number(limit):
        reason = f"{describe(value)} is not greater than the exclusive minimum {text(limit)}"
        return failure(base, where, reason)
    limit = schema.get("exclusiveMaximum")
    if limit is not None and x >= number(limit):
        reason = f"{describe(value)} is not less than the exclusive maximum {text(limit)}"
        return failure(base, where, reason)
    return None


def validate_string(schema, value, base, where):
    length = len(value)  # code points
    limit = schema.get("minLength")
    if limit is not None and length < number(limit):
        reason = f"{describe(value)} is shorter than the minimum length {text(limit)}"
        return failure(base, where, reason)
    limit = schema.get("maxLength")
    if limit is not None and length > number(limit):
        reason = f"{describe(value)} is longer than the maximum length {text(limit)}"
        return failure(base, where, reason)
    pattern = schema.get("pattern")
    # A string with NUL is matched up to its first NUL, as in the C plugin.
    if pattern is not None and re.search(pattern, value.split("\0", 1)[0]) is None:
        reason = f"{describe(value)} does not match the pattern {quote(pattern, 80)}"
        return failure(base, where, reason)
    return None


def validate_array(schema, value, base, where):
    count = len(value)
    limit = schema.get("minItems")
    if limit is not None and count < number(limit):
        reason = f"the array has {count} items, fewer than the minimum {text(limit)}"
        return failure(base, where, reason)
    limit = schema.get("maxItems")
    if limit is not None and count > number(limit):
        reason = f"the array has {count} items, more than the maximum {text(limit)}"
        return failure(base, where, reason)
    items = schema.get("items", MISSING)
    if items is not MISSING:
        for index, item in enumerate(value):
            message = validate(items, item, base, f"{where}/{index}")
            if message is not None:
                return message
    return None


def validate_object(schema, value, base, where):
    for name in schema.get("required", ()):
        if name not in value:
            return failure(base, where, f"missing required property {describe(name)}")
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", MISSING)
    for key, item in value.items():
        sub = properties.get(key, MISSING)
        if sub is MISSING and extra is MISSING:
            continue
        if sub is MISSING and extra is False:
            reason = f"property {quote(key, 40)} is not allowed (additionalProperties is false)"
            return failure(base, where, reason)
        message = validate(extra if sub is MISSING else sub, item, base, f"{where}/{escape(key)}")
        if message is not None:
            return message
    return None


# ---- JSON values ----


def is_number(value):
    # JSON true and false are not numbers, though Python's bool is an int.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(value):
    """A number as the C plugin holds it: a double (strtod of its text)."""
    return float(getattr(value, "text", value))


def is_integer(value):
    """A number with no fractional part (1.0 is one; 1e400, infinite, is not)."""
    if not is_number(value):
        return False
    x = number(value)
    return x.is_integer()


def type_name(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "number"


def type_matches(name, value):
    if name == "integer":
        return is_integer(value)
    return type_name(value) == name


def equal(a, b):
    """Equality as JSON Schema defines it: numbers by value, objects regardless of order."""
    if type_name(a) != type_name(b):
        return False
    if is_number(a):
        return number(a) == number(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and equal(v, b[k]) for k, v in a.items())
    return a == b


def text(value):
    """A number's text as written."""
    return getattr(value, "text", None) or json.dumps(value)


def describe(value):
    """A short description of a value for messages: scalars as JSON (strings cut after 40
    code points, numbers as written), containers by kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value, 40)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return text(value)


SHORT_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote(string, limit):
    """`string` as a JSON string literal, cut after `limit` code points (then `...`)."""
    cut = len(string) > limit
    out = []
    for char in string[:limit] if cut else string:
        if char in '"\\':
            out.append("\\" + char)
        elif char in SHORT_ESCAPES:
            out.append(SHORT_ESCAPES[char])
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + ("..." if cut else "") + '"'


def escape(key):
    """One JSON pointer token (RFC 6901): ~ as ~0, / as ~1."""
    return key.replace("~", "~0").replace("/", "~1")
