"""Unit tests of upstreams.py, natively (no wasm): `python3 -m unittest` in this folder."""

import json
import unittest

import upstreams


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


def render(services):
    warnings = []
    outputs = upstreams.render_all(FakeStore({"services": services}), warnings.append)
    return {path: json.loads(value) for path, value in outputs}, warnings


class Rendering(unittest.TestCase):
    def test_the_example(self):
        outputs, warnings = render(
            {
                "web": {
                    "b": {"address": "10.0.0.6", "port": 8080, "down": True},
                    "a": {"address": "10.0.0.5", "port": 8080, "weight": 2},
                }
            }
        )
        self.assertEqual(
            outputs,
            {
                "/rendered/nginx/web.conf": (
                    "upstream web {\n"
                    "    server 10.0.0.5:8080 weight=2;\n"
                    "    server 10.0.0.6:8080 down;\n"
                    "}\n"
                )
            },
        )
        self.assertEqual(warnings, [])

    def test_value_is_a_json_string(self):
        store = FakeStore({"services": {"web": {"a": {"address": "h", "port": 1}}}})
        [(path, value)] = upstreams.render_all(store)
        self.assertEqual(path, "/rendered/nginx/web.conf")
        self.assertEqual(value, '"upstream web {\\n    server h:1;\\n}\\n"')

    def test_one_file_per_service_in_name_order(self):
        store = FakeStore(
            {
                "services": {
                    "web": {"i1": {"address": "10.0.0.1", "port": 80}},
                    "api": {"i1": {"address": "api-1.internal", "port": 9000}},
                }
            }
        )
        outputs = upstreams.render_all(store)
        self.assertEqual([path for path, _ in outputs], ["/rendered/nginx/api.conf", "/rendered/nginx/web.conf"])
        self.assertEqual(json.loads(outputs[0][1]), "upstream api {\n    server api-1.internal:9000;\n}\n")

    def test_instances_are_sorted_by_name(self):
        outputs, _ = render(
            {
                "web": {
                    "web-10": {"address": "10.0.0.10", "port": 80},
                    "web-2": {"address": "10.0.0.2", "port": 80},
                    "Web-3": {"address": "10.0.0.3", "port": 80},
                }
            }
        )
        self.assertEqual(
            outputs["/rendered/nginx/web.conf"],
            "upstream web {\n"
            "    server 10.0.0.3:80;\n"
            "    server 10.0.0.10:80;\n"
            "    server 10.0.0.2:80;\n"
            "}\n",
        )

    def test_weight_and_down_together_and_down_false(self):
        outputs, _ = render(
            {
                "db": {
                    "a": {"address": "10.0.0.1", "port": 5432, "weight": 3, "down": True},
                    "b": {"address": "10.0.0.2", "port": 5432, "weight": 1, "down": False},
                    "c": {"address": "10.0.0.3", "port": 5432.0, "weight": 2.0, "tags": ["x"]},
                }
            }
        )
        self.assertEqual(
            outputs["/rendered/nginx/db.conf"],
            "upstream db {\n"
            "    server 10.0.0.1:5432 weight=3 down;\n"
            "    server 10.0.0.2:5432 weight=1;\n"
            "    server 10.0.0.3:5432 weight=2;\n"
            "}\n",
        )

    def test_ipv6_addresses_are_bracketed(self):
        outputs, _ = render({"web": {"a": {"address": "2001:db8::5", "port": 443}}})
        self.assertEqual(outputs["/rendered/nginx/web.conf"], "upstream web {\n    server [2001:db8::5]:443;\n}\n")

    def test_no_services(self):
        self.assertEqual(upstreams.render_all(FakeStore({})), [])
        self.assertEqual(upstreams.render_all(FakeStore({"services": 5})), [])


class Malformed(unittest.TestCase):
    def test_malformed_registrations_are_skipped_with_a_warning(self):
        bad = {
            "not-object": "10.0.0.1:80",
            "no-address": {"port": 80},
            "address-number": {"address": 10, "port": 80},
            "address-injection": {"address": "10.0.0.1; include /etc/passwd", "port": 80},
            "address-zone": {"address": "fe80::1%eth0", "port": 80},
            "no-port": {"address": "10.0.0.1"},
            "port-zero": {"address": "10.0.0.1", "port": 0},
            "port-big": {"address": "10.0.0.1", "port": 65536},
            "port-string": {"address": "10.0.0.1", "port": "80"},
            "port-fraction": {"address": "10.0.0.1", "port": 80.5},
            "port-bool": {"address": "10.0.0.1", "port": True},
            "weight-zero": {"address": "10.0.0.1", "port": 80, "weight": 0},
            "weight-string": {"address": "10.0.0.1", "port": 80, "weight": "2"},
            "down-string": {"address": "10.0.0.1", "port": 80, "down": "yes"},
        }
        services = {"web": dict(bad, zz={"address": "10.0.0.9", "port": 80})}
        outputs, warnings = render(services)
        self.assertEqual(outputs, {"/rendered/nginx/web.conf": "upstream web {\n    server 10.0.0.9:80;\n}\n"})
        self.assertEqual(len(warnings), len(bad))
        for name in bad:
            self.assertTrue(any(w.startswith(f"skipping /services/web/{name}: ") for w in warnings), name)

    def test_a_too_deep_registration_is_skipped(self):
        deep = {"address": "10.0.0.1", "port": 80, "meta": json.loads("[" * 64 + "]" * 64)}
        outputs, warnings = render({"web": {"a": deep, "b": {"address": "10.0.0.2", "port": 80}}})
        self.assertEqual(outputs, {"/rendered/nginx/web.conf": "upstream web {\n    server 10.0.0.2:80;\n}\n"})
        self.assertEqual(warnings, ["skipping /services/web/a: it nests deeper than 64 levels"])

    def test_warning_text(self):
        _, warnings = render({"web": {"a": {"address": "10.0.0.1", "port": 70000}}})
        self.assertEqual(warnings, ['skipping /services/web/a: "port" must be an integer from 1 to 65535, not 70000'])

    def test_a_service_with_no_valid_instance_gets_no_file(self):
        outputs, warnings = render(
            {
                "web": {"a": {"address": "10.0.0.1", "port": 80}},
                "broken": {"a": {"address": "10.0.0.1"}},
                "empty": {},
                "leaf": 5,
            }
        )
        self.assertEqual(list(outputs), ["/rendered/nginx/web.conf"])
        self.assertEqual(len(warnings), 1)

    def test_unsafe_service_names_are_skipped(self):
        outputs, warnings = render(
            {
                "we b": {"a": {"address": "10.0.0.1", "port": 80}},
                "x{}": {"a": {"address": "10.0.0.1", "port": 80}},
                "api.v2": {"a": {"address": "10.0.0.1", "port": 80}},
            }
        )
        self.assertEqual(list(outputs), ["/rendered/nginx/api.v2.conf"])
        self.assertEqual(len(warnings), 2)
        self.assertIn("not usable as an nginx upstream name", warnings[0])


if __name__ == "__main__":
    unittest.main()
