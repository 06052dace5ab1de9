"""Renders the templates stored under /templates into derived keys (the `template` plugin).

A template is a key under /templates:
  - a string: the template source, rendered to <output prefix>/<its name>;
  - an object {"template": SOURCE, "output": PATH} (a directory with those two keys): rendered
    to PATH, relative to the output prefix (or absolute, inside it).
Templates are Jinja2 (the language of Ansible and Salt). Besides Jinja2's own filters and tests
they see:
  - `store`: the store, read lazily (`store.services.web.port`, `store["my-app"]`);
  - `get(path, default=None)`: the value at an absolute path;
  - `children(path)`: the (name, value) pairs of a directory, sorted by name (empty if missing);
  - `keys(path)`: the names in a directory;
  - filters `tojson` (plain JSON, not HTML-escaped; `indent=` and `sort_keys=` as json.dumps)
    and `fromjson`.
A template that does not render keeps its last good output (remembered by the instance, or read
back from the plugin's own output prefix, which the node keeps across restarts) and is reported: an `error` log line (the plugin's last error in `herd plugin ls`) and the key
<output prefix>/.errors/<template name> holding the message, gone once the template renders.

No WebAssembly here: the module runs under plain CPython for its tests (test_template.py).
"""

import importlib
import json
import pkgutil

import jinja2

TEMPLATES = "/templates"
ERRORS = ".errors"

# The last good rendering of each template: name -> (output path, text).
_last_good = {}


class Store:
    """Reads from a `store` import-like object: `get(path)` -> JSON text or None, `list(path)`
    -> child names (directories end with '/')."""

    def __init__(self, backend):
        self.backend = backend

    def get(self, path, default=None):
        text = self.backend.get(path)
        return default if text is None else json.loads(text)

    def names(self, path):
        return [n[:-1] if n.endswith("/") else n for n in self.backend.list(path)]

    def is_dir(self, path, name):
        return (name + "/") in self.backend.list(path)


def join(path, name):
    return path.rstrip("/") + "/" + name


class Dir:
    """A directory of the store, read as it is used (`store.a.b`, `store["a"]`, loops)."""

    def __init__(self, store, path):
        self._store, self._path = store, path

    def __getitem__(self, name):
        name = str(name)
        listed = self._store.backend.list(self._path)
        if name + "/" in listed:
            return Dir(self._store, join(self._path, name))
        if name in listed:
            return self._store.get(join(self._path, name))
        raise KeyError(name)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __contains__(self, name):
        return name in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def keys(self):
        return self._store.names(self._path)

    def items(self):
        return [(name, self[name]) for name in self.keys()]

    def values(self):
        return [self[name] for name in self.keys()]

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default

    def __repr__(self):
        return f"Dir({self._path})"


def tojson(value, indent=None, sort_keys=False):
    if isinstance(value, Dir):
        value = plain(value)
    return json.dumps(value, indent=indent, sort_keys=sort_keys, ensure_ascii=False)


def plain(value):
    """A `Dir` read whole, as plain dicts."""
    if isinstance(value, Dir):
        return {name: plain(v) for name, v in value.items()}
    return value


def environment(store):
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
    )
    env.filters["tojson"] = tojson
    env.filters["fromjson"] = json.loads
    env.globals.update(
        store=Dir(store, "/"),
        get=store.get,
        keys=store.names,
        children=lambda path: [
            (name, Dir(store, join(path, name)) if store.is_dir(path, name) else store.get(join(path, name)))
            for name in store.names(path)
        ],
    )
    return env


def where(output_prefix, name, spec):
    """The output path of template `name` (`spec`: its key's value), or raises ValueError."""
    if isinstance(spec, str):
        source, out = spec, name
    elif isinstance(spec, dict) and isinstance(spec.get("template"), str):
        source, out = spec["template"], spec.get("output", name)
        if not isinstance(out, str) or not out.strip("/"):
            raise ValueError('"output" must be a path')
    else:
        raise ValueError('a template is a string, or an object with "template" (and "output")')
    prefix = output_prefix.rstrip("/")
    if out.startswith("/"):
        if not out.startswith(prefix + "/"):
            raise ValueError(f"output {out} is outside the plugin's output prefix {output_prefix}")
        path = out
    else:
        path = prefix + "/" + out.strip("/")
    if any(seg in ("", ".", "..") for seg in path.split("/")[1:]):
        raise ValueError(f"output {out} is not a clean path")
    if path.startswith(prefix + "/" + ERRORS + "/") or path == prefix + "/" + ERRORS:
        raise ValueError(f"output {out} is where errors are reported")
    return source, path


def render_all(backend, output_prefix, report):
    """Every template rendered: a list of (path, JSON text) outputs. `report(message)` is
    called for each template that did not render."""
    store = Store(backend)
    env = environment(store)
    outputs = {}
    errors = {}
    names = store.names(TEMPLATES)
    for name in names:
        path = None
        try:
            source, path = where(output_prefix, name, store.get(join(TEMPLATES, name)))
            text = env.from_string(source).render()
            clash = clashing(outputs, path)
            if clash == path:
                raise ValueError(f"output {path} is also the output of another template")
            if clash:
                raise ValueError(
                    f"output {path} and the output {clash} of another template nest inside each other"
                )
            outputs[path] = text
            _last_good[name] = (path, text)
        except Exception as e:  # noqa: BLE001 - every failure of one template is reported
            message = describe(e)
            errors[name] = message
            report(f"template {join(TEMPLATES, name)}: {message}")
            good = _last_good.get(name) or previous(backend, path)
            if good and not clashing(outputs, good[0]):
                outputs[good[0]] = good[1]
    for gone in set(_last_good) - set(names):
        del _last_good[gone]
    result = [(path, json.dumps(text)) for path, text in sorted(outputs.items())]
    prefix = output_prefix.rstrip("/")
    for name, message in sorted(errors.items()):
        result.append((f"{prefix}/{ERRORS}/{name}", json.dumps(message)))
    return result


def clashing(outputs, path):
    """An output path already taken that is `path`, or above or below it (a file cannot also
    be a directory), or None."""
    for taken in outputs:
        if taken == path or taken.startswith(path + "/") or path.startswith(taken + "/"):
            return taken
    return None


def previous(backend, path):
    """The output at `path` from before (a plugin reads its own output prefix as its current
    outputs, which the node keeps across restarts): (path, text), or None."""
    if path is None:
        return None
    text = backend.get(path)
    value = None if text is None else json.loads(text)
    return (path, value) if isinstance(value, str) else None


def preload():
    """Imports every module of Jinja2 and MarkupSafe (some are imported only when needed)."""
    import markupsafe

    # Codecs are imported by name when first used; Jinja2's lexer decodes string literals.
    for codec in ("unicode_escape", "raw_unicode_escape", "ascii", "latin_1", "utf_8"):
        importlib.import_module(f"encodings.{codec}")
    for package in (jinja2, markupsafe):
        for module in pkgutil.iter_modules(package.__path__):
            if module.name not in ("_speedups", "nativetypes") and not module.name.startswith("async"):
                try:
                    importlib.import_module(f"{package.__name__}.{module.name}")
                except ImportError:
                    pass


def describe(e):
    if isinstance(e, jinja2.TemplateSyntaxError):
        return f"line {e.lineno}: {e.message}"
    if isinstance(e, jinja2.UndefinedError):
        return f"undefined: {e.message}"
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if not isinstance(e, ValueError) else text
