"""Value normalisation for herd writes: the normalize plugin's logic, with no wasm in it.

Rules, applied to the value of every put:
- a string is trimmed of surrounding whitespace;
- a string under a host key (the key's name is `host` or `hostname`, or ends with `_host`;
  compared case-insensitively) is also lower-cased and loses one trailing dot, and must then be
  a DNS host name or an IP address, else the write is refused;
- inside an object the rules apply recursively by each member's key; the elements of an array
  are treated as if they were at the array's key (so `"backup_host": ["A.", "b"]` is hosts);
- numbers, booleans and null are kept as written (their JSON text is not touched).
The result is a fixed point: normalising a normalised value changes nothing.
Invariant: this module knows nothing of componentize-py or the generated bindings.
"""

import ipaddress
import json
import re


# Deeper JSON is refused before parsing: CPython's parser recurses on the C stack, and in wasm
# it exhausts the stack (a trap) before Python's recursion check fires, somewhere past 300 levels.
MAX_DEPTH = 64  # as the C plugins' parser (plugins/json-schema/json.h)
STRING = re.compile(r'"(?:[^"\\]+|\\.)*"')
BRACKETS = re.compile(r"[][{}]")


class Refused(Exception):
    """A value that cannot be normalised; the message is for the writer."""


class Number:
    """A JSON number kept as its text, so 1.50 or 1e400 are returned exactly as written."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text

    def __eq__(self, other):
        return isinstance(other, Number) and other.text == self.text


def transform(path, value):
    """The JSON text to store instead of `value` written at `path`; raises Refused."""
    key = path.rsplit("/", 1)[-1]
    if nesting(value) > MAX_DEPTH:
        raise Refused(f"{path}: the value nests deeper than {MAX_DEPTH} levels")
    try:
        parsed = parse(value)
        normal = normalise(parsed, key, path)
        if normal == parsed:
            return value  # unchanged: keep the writer's text
        return dump(normal)
    except RecursionError:
        raise Refused(f"{path}: the value is nested too deeply to normalise") from None


def nesting(text):
    """How deeply arrays and objects nest in JSON text, counted up to MAX_DEPTH + 1."""
    depth = deepest = 0
    for bracket in BRACKETS.findall(STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                break
    return deepest


def parse(text):
    return json.loads(text, parse_int=Number, parse_float=Number)


def is_host_key(key):
    key = key.lower()
    return key in ("host", "hostname") or key.endswith("_host")


def normalise(value, key, location):
    if isinstance(value, str):
        text = value.strip()
        if is_host_key(key):
            text = text.lower()
            if text.endswith("."):
                text = text[:-1]
            if not is_host(text):
                message = f"{location}: {dump(text)} is not a valid host name"
                raise Refused(message.encode("utf-8", "replace").decode("utf-8"))
        return text
    if isinstance(value, dict):
        return {k: normalise(v, k, f"{location}/{escape(k)}") for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v, key, f"{location}/{i}") for i, v in enumerate(value)]
    return value


LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


def is_host(text):
    """A DNS host name (RFC 1123 labels, ASCII, lower case) or an IPv4/IPv6 address."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    if not text or len(text) > 253 or not text.isascii():
        return False
    labels = text.split(".")
    if not all(LABEL.match(label) for label in labels):
        return False
    # An all-numeric last label would read as a (bad) IPv4 address: 10.0.0.256, 1.2.3.
    return not labels[-1].isdigit()


def escape(key):
    """One JSON pointer token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def dump(value):
    """Compact JSON text; numbers come out exactly as they were parsed."""
    if isinstance(value, Number):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{dump(k)}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    text = json.dumps(value, ensure_ascii=False)
    if not is_utf8(text):
        text = json.dumps(value)  # a lone surrogate ("\ud800") stays escaped
    return text


def is_utf8(text):
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
