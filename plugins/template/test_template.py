"""Unit tests of render.py, natively (no wasm): `python3 -m unittest` in this folder."""

import json
import unittest

import render


class FakeStore:
    """The store as a plugin sees it: objects are directories, everything else is a leaf."""

    def __init__(self, tree):
        self.tree = tree

    def node(self, path):
        node = self.tree
        for segment in [s for s in path.split("/") if s]:
            if not isinstance(node, dict) or segment not in node:
                return None, False
            node = node[segment]
        return node, True

    def get(self, path):
        node, found = self.node(path)
        return json.dumps(node) if found else None

    def list(self, path):
        node, found = self.node(path)
        if not found or not isinstance(node, dict):
            return []
        return sorted(k + "/" if isinstance(v, dict) else k for k, v in node.items())


UPSTREAM = """upstream backend {
{% for name, s in children("/services") %}
{% if not s.down | default(false) %}
    server {{ s.address }}:{{ s.port | default(80) }};  # {{ name | upper }}
{% endif %}
{% endfor %}
}
"""


def run(tree):
    reports = []
    outputs = render.render_all(FakeStore(tree), "/rendered", reports.append)
    return {path: json.loads(value) for path, value in outputs}, reports


class Rendering(unittest.TestCase):
    def setUp(self):
        render._last_good.clear()

    def test_loops_conditionals_defaults_and_filters(self):
        tree = {
            "services": {
                "web": {"address": "10.0.0.5", "port": 8080},
                "api": {"address": "10.0.0.6"},
                "old": {"address": "10.0.0.7", "down": True},
            },
            "templates": {"upstream": {"template": UPSTREAM, "output": "nginx/upstream.conf"}},
        }
        out, reports = run(tree)
        self.assertEqual(reports, [])
        self.assertEqual(
            out["/rendered/nginx/upstream.conf"],
            "upstream backend {\n    server 10.0.0.6:80;  # API\n    server 10.0.0.5:8080;  # WEB\n}\n",
        )

    def test_a_string_template_renders_to_its_name_and_sees_the_store(self):
        tree = {
            "app": {"db": {"host": "db.local", "port": 5432}, "name": "shop"},
            "templates": {
                "app.env": "NAME={{ store.app.name }}\nDB={{ get('/app/db') | tojson(sort_keys=true) }}\n"
                "KEYS={{ keys('/app') | join(',') }}\n{{ store.app.missing | default('none') }}\n",
            },
        }
        out, reports = run(tree)
        self.assertEqual(reports, [])
        self.assertEqual(
            out["/rendered/app.env"],
            'NAME=shop\nDB={"host": "db.local", "port": 5432}\nKEYS=db,name\nnone\n',
        )

    def test_a_broken_template_keeps_its_last_good_output_and_is_reported(self):
        tree = {"v": 1, "templates": {"a": "{{ get('/v') }}", "b": "ok"}}
        out, reports = run(tree)
        self.assertEqual(out, {"/rendered/a": "1", "/rendered/b": "ok"})
        tree["templates"]["a"] = "{{ get('/v') "
        tree["v"] = 2
        out, reports = run(tree)
        self.assertEqual(out["/rendered/a"], "1", "the last good output stays")
        self.assertEqual(out["/rendered/b"], "ok", "other templates still render")
        self.assertIn("line 1", out["/rendered/.errors/a"])
        self.assertEqual(len(reports), 1)
        self.assertIn("/templates/a", reports[0])
        tree["templates"]["a"] = "{{ get('/v') }}"
        out, reports = run(tree)
        self.assertEqual(out, {"/rendered/a": "2", "/rendered/b": "ok"}, "fixed: the error goes")
        self.assertEqual(reports, [])

    def test_after_a_restart_the_last_good_output_is_read_back(self):
        # A new instance (the node restarted) remembers nothing, but reads its own output
        # prefix as the outputs the node kept.
        tree = {
            "templates": {"a": "{{ nope( }}"},
            "rendered": {"a": "kept from before", "other": "not mine"},
        }
        out, reports = run(tree)
        self.assertEqual(out["/rendered/a"], "kept from before")
        self.assertNotIn("/rendered/other", out, "only a broken template's own output is kept")
        self.assertEqual(len(reports), 1)

    def test_undefined_names_and_bad_outputs_are_errors(self):
        tree = {
            "templates": {
                "typo": "{{ stor.app }}",
                "outside": {"template": "x", "output": "/elsewhere/x"},
                "dots": {"template": "x", "output": "../x"},
                "number": 5,
            }
        }
        out, reports = run(tree)
        self.assertEqual(len(reports), 4)
        self.assertIn("undefined", out["/rendered/.errors/typo"])
        self.assertIn("outside", out["/rendered/.errors/outside"])
        self.assertIn("clean path", out["/rendered/.errors/dots"])
        self.assertIn("a template is a string", out["/rendered/.errors/number"])

    def test_two_templates_with_one_output_are_an_error(self):
        tree = {"templates": {"a": {"template": "1", "output": "x"}, "b": {"template": "2", "output": "x"}}}
        out, reports = run(tree)
        self.assertEqual(out["/rendered/x"], "1")
        self.assertIn("another template", out["/rendered/.errors/b"])

    def test_outputs_that_nest_inside_each_other_are_an_error(self):
        tree = {"templates": {"a": {"template": "1", "output": "x"}, "b": {"template": "2", "output": "x/y"}}}
        out, reports = run(tree)
        self.assertEqual(out["/rendered/x"], "1")
        self.assertNotIn("/rendered/x/y", out)
        self.assertIn("nest inside each other", out["/rendered/.errors/b"])
        self.assertEqual(len(reports), 1)


if __name__ == "__main__":
    unittest.main()
