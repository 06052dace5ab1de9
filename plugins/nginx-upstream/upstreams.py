"""nginx upstream blocks from service registrations: the nginx-upstream plugin's logic, no wasm.

Input: `/services/<service>/<instance>` = {"address": "10.0.0.5", "port": 8080,
"weight": 2 (optional), "down": true (optional)}; other members are ignored.
Output: one `/rendered/nginx/<service>.conf` per service with at least one valid instance, whose
value is the rendered text as a JSON string. `render_all` takes a `store` object with `get` and
`list` (the plugin's `store` import, or a stub in the tests) and a `warn` callable for skipped
registrations. Invariant: this module knows nothing of componentize-py or the bindings.
"""

import ipaddress
import json
import re

SERVICES = "/services"
# Deeper JSON is not parsed: CPython's parser recurses on the C stack, and in wasm it exhausts
# the stack (a trap) before Python's recursion check fires. No registration nests this deep.
MAX_DEPTH = 64  # as the C plugins' parser (plugins/json-schema/json.h)
STRING = re.compile(r'"(?:[^"\\]+|\\.)*"')
BRACKETS = re.compile(r"[][{}]")
# The plugin cannot learn its output prefix, so it is fixed: install with --output /rendered/nginx.
OUTPUT = "/rendered/nginx"

# An upstream name and a host name go into nginx's config unquoted: allow only safe characters.
SERVICE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")


def render_all(store, warn=lambda message: None):
    """[(path, json_text)] for every service with a valid instance, in service name order."""
    outputs = []
    for service in sorted(child_names(store, SERVICES)):
        if not SERVICE_NAME.match(service):
            warn(f"skipping service {json.dumps(service)}: not usable as an nginx upstream name")
            continue
        servers = []
        for instance in sorted(child_names(store, f"{SERVICES}/{service}")):
            path = f"{SERVICES}/{service}/{instance}"
            text = store.get(path)
            if text is None:
                continue
            if too_deep(text):
                warn(f"skipping {path}: it nests deeper than {MAX_DEPTH} levels")
                continue
            server, problem = parse_registration(json.loads(text))
            if problem is not None:
                warn(f"skipping {path}: {problem}")
                continue
            servers.append(server)
        if servers:
            outputs.append((f"{OUTPUT}/{service}.conf", json.dumps(render(service, servers))))
    return outputs


def too_deep(text):
    depth = 0
    for bracket in BRACKETS.findall(STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def child_names(store, path):
    # The store lists directories with a trailing "/": a registration (an object) is one.
    return [name.rstrip("/") for name in store.list(path)]


def render(service, servers):
    lines = [f"upstream {service} {{"]
    lines += [f"    server {server};" for server in servers]
    lines.append("}")
    return "\n".join(lines) + "\n"


def parse_registration(value):
    """("address:port[ weight=N][ down]", None) for a valid registration, else (None, reason)."""
    if not isinstance(value, dict):
        return None, f"a registration must be an object, not {show(value)}"
    address = value.get("address")
    if not isinstance(address, str) or not is_host(address):
        return None, f'"address" must be an IP address or a host name, not {show(address)}'
    port = value.get("port")
    if not is_whole(port) or not 1 <= port <= 65535:
        return None, f'"port" must be an integer from 1 to 65535, not {show(port)}'
    weight = value.get("weight")
    if weight is not None and (not is_whole(weight) or weight < 1):
        return None, f'"weight" must be a positive integer, not {show(weight)}'
    down = value.get("down", False)
    if not isinstance(down, bool):
        return None, f'"down" must be true or false, not {show(down)}'
    host = f"[{address}]" if ":" in address else address  # IPv6
    server = f"{host}:{int(port)}"
    if weight is not None:
        server += f" weight={int(weight)}"
    if down:
        server += " down"
    return server, None


def is_whole(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or value.is_integer()


def is_host(text):
    try:
        ipaddress.ip_address(text)
        return "%" not in text  # a zone id (fe80::1%eth0) means nothing to another machine
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or not name.isascii():
        return False
    labels = name.split(".")
    return all(LABEL.match(label) for label in labels) and not labels[-1].isdigit()


def show(value):
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
