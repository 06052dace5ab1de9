"""Unit tests of normalizer.py, natively (no wasm): `python3 -m unittest` in this folder."""

import unittest

from normalizer import Refused, transform


class Strings(unittest.TestCase):
    def test_strings_are_trimmed(self):
        self.assertEqual(transform("/app/name", '"  web \\n"'), '"web"')
        self.assertEqual(transform("/app/name", '"\\t a b \\r"'), '"a b"')

    def test_other_strings_keep_their_case(self):
        self.assertEqual(transform("/app/name", '"Web"'), '"Web"')
        self.assertEqual(transform("/app/url", '" HTTP://X. "'), '"HTTP://X."')

    def test_unicode_is_kept(self):
        self.assertEqual(transform("/app/name", '" caf\\u00e9 "'), '"caf\u00e9"')

    def test_lone_surrogate_stays_escaped(self):
        self.assertEqual(transform("/app/name", '" \\ud800 "'), '"\\ud800"')

    def test_unchanged_values_keep_the_writers_text(self):
        for text in ['"web"', "5432", "1.50", "1e400", "true", "null", '{"a": 1,  "b": [1.0]}', "[]"]:
            with self.subTest(text):
                self.assertEqual(transform("/app/x", text), text)


class Hosts(unittest.TestCase):
    def test_host_keys_are_lower_cased_and_lose_a_trailing_dot(self):
        for key in ["host", "hostname", "db_host", "Host", "DB_HOST"]:
            with self.subTest(key):
                self.assertEqual(transform(f"/app/db/{key}", '" DB.Example.COM. "'), '"db.example.com"')

    def test_other_keys_are_not_hosts(self):
        for key in ["hosts", "host_name", "hostx", "ghost", "my-host", "_hostname"]:
            with self.subTest(key):
                self.assertEqual(transform(f"/app/{key}", '"A B!"'), '"A B!"')

    def test_valid_hosts(self):
        for host in [
            "localhost",
            "db",
            "db-1.internal",
            "a" * 63 + ".example",
            "1password.com",
            "10.0.0.5",
            "::1",
            "fe80::1",
            "2001:db8::8a2e:370:7334",
            ".".join(["a" * 49] * 5),  # 249 characters
        ]:
            with self.subTest(host):
                self.assertEqual(transform("/app/host", f'"{host}"'), f'"{host}"')

    def test_ip_addresses_are_normalised_too(self):
        self.assertEqual(transform("/app/host", '"2001:DB8::1"'), '"2001:db8::1"')
        self.assertEqual(transform("/app/host", '" 10.0.0.5. "'), '"10.0.0.5"')

    def test_invalid_hosts_are_refused(self):
        for host in [
            "bad host!",
            "",
            "   ",
            "-db",
            "db-",
            "db..local",
            "db.local..",
            "a" * 64,
            ".".join(["a" * 50] * 5),  # 254 characters
            "db_1",
            "b\u00fccher.example",
            "10.0.0.256",
            "1.2.3",
            "http://db",
            "db:5432",
            "[::1]",
        ]:
            with self.subTest(host):
                with self.assertRaises(Refused):
                    transform("/app/db/host", f'"{host}"')

    def test_the_refusal_message(self):
        with self.assertRaises(Refused) as refused:
            transform("/app/db/host", '"bad host!"')
        self.assertEqual(str(refused.exception), '/app/db/host: "bad host!" is not a valid host name')
        with self.assertRaises(Refused) as refused:
            transform("/app/db/host", '" BAD HOST! "')
        self.assertEqual(str(refused.exception), '/app/db/host: "bad host!" is not a valid host name')

    def test_non_strings_at_host_keys_are_unchanged(self):
        for text in ["5", "true", "null", "1.0"]:
            with self.subTest(text):
                self.assertEqual(transform("/app/host", text), text)


class Objects(unittest.TestCase):
    def test_members_by_key_name(self):
        self.assertEqual(
            transform("/app/db", '{"host": " DB.local. ", "port": 5432, "name": " Main "}'),
            '{"host":"db.local","port":5432,"name":"Main"}',
        )

    def test_nested_objects_and_key_order(self):
        self.assertEqual(
            transform("/app", '{"z": {"replica_host": "R1.Local"}, "a": {"hostname": "X"}, "n": 1.50}'),
            '{"z":{"replica_host":"r1.local"},"a":{"hostname":"x"},"n":1.50}',
        )

    def test_an_object_at_a_host_key_uses_its_own_keys(self):
        self.assertEqual(transform("/app/host", '{"name": " A ", "port": 1}'), '{"name":"A","port":1}')

    def test_arrays_inherit_their_key(self):
        self.assertEqual(
            transform("/app", '{"backup_host": [" A. ", "B"], "tags": [" X "]}'),
            '{"backup_host":["a","b"],"tags":["X"]}',
        )
        self.assertEqual(transform("/app/names", '[" a ", 1, [" b "]]'), '["a",1,["b"]]')

    def test_refusal_location_inside_the_value(self):
        with self.assertRaises(Refused) as refused:
            transform("/app", '{"db": {"host": "bad host!"}}')
        self.assertEqual(str(refused.exception), '/app/db/host: "bad host!" is not a valid host name')
        with self.assertRaises(Refused) as refused:
            transform("/app", '{"a/b": {"x_host": ["ok", "no way"]}}')
        self.assertEqual(str(refused.exception), '/app/a~1b/x_host/1: "no way" is not a valid host name')

    def test_deep_nesting_is_refused_before_parsing(self):
        ok = "[" * 64 + '" a "' + "]" * 64
        self.assertEqual(transform("/app/x", ok), "[" * 64 + '"a"' + "]" * 64)
        with self.assertRaises(Refused) as refused:
            transform("/app/x", "[" * 65 + "]" * 65)
        self.assertEqual(str(refused.exception), "/app/x: the value nests deeper than 64 levels")
        self.assertEqual(transform("/app/x", '{"a": "[[[[' + "{" * 300 + '\\"}"}'), '{"a": "[[[[' + "{" * 300 + '\\"}"}')


class Idempotence(unittest.TestCase):
    def test_normalising_twice_changes_nothing(self):
        for path, text in [
            ("/app/db", '{"host": " DB.Local. ", "name": "  x ", "ports": [1, 2]}'),
            ("/app/hostname", '"  EXAMPLE.org. "'),
            ("/app/x", '" \\u00a0spaced\\u2003 "'),
            ("/app/host", '"FE80::1"'),
            ("/app/list", '[{"host": "A"}, " b "]'),
        ]:
            with self.subTest(text):
                once = transform(path, text)
                self.assertEqual(transform(path, once), once)


if __name__ == "__main__":
    unittest.main()
