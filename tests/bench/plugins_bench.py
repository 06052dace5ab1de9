#!/usr/bin/env python3
"""The plugin benchmark driver (run it through tests/bench/plugins.sh).

Starts a release `herd serve` in a temp dir and measures, in one run:
  - write latency (sequential PUTs over one keep-alive HTTPS connection, p50/p99) with no
    plugin, with the C JSON Schema validator and with the Python one guarding the written key;
    the added p50 is each run's p50 minus the no-plugin p50 of the same run;
  - write throughput (wrk, kv.lua, 2 threads, 16 connections, one key) in the same three setups;
  - derive latency: a registration PUT under /services until the rendered nginx upstream
    (GET /rendered/nginx/web.conf) shows it, including the 20 ms debounce;
  - restart time with the Python plugin installed: from spawning `herd serve` to the first
    write judged by the plugin, with the compiled code cached (and once with the cache wiped).
Prints a markdown report.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import herd_node


def log(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))]


SCHEMA = {"guards": "/bench/k0", "schema": {"type": "string", "maxLength": 1000}}


class Node(herd_node.Node):
    def install(self, name, wasm, manifest):
        with open(wasm, "rb") as f:
            _, data = self.call("POST", "/v1/plugins/files", f.read(), "application/wasm")
        manifest["sha256"] = json.loads(data)["sha256"]
        self.call("PUT", f"/v1/plugins/{name}", json.dumps(manifest))

    def remove(self, name):
        self.call("DELETE", f"/v1/plugins/{name}")


def latency(node, n, path="/v1/kv/bench/k0"):
    samples = []
    body = json.dumps("v" * 62)
    for i in range(n):
        t = time.perf_counter()
        node.call("PUT", path, body)
        samples.append((time.perf_counter() - t) * 1e6)
    return samples


def hooks(node):
    """The node's count of writes that ran hooks and their total hook time."""
    _, body = node.call("GET", "/v1/plugins")
    return json.loads(body)["hooks"]


def throughput(node, wrk, lua, duration):
    args = ["wrk", "-t2", "-c16", f"-d{duration}", "--latency", "-s", lua, node.api,
            "--", "herd", "put", node.token, "1", "64"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    m = re.search(r"BENCH requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+)", out)
    if not m:
        sys.exit(f"wrk printed no BENCH line:\n{out}")
    req, dur, p50, p99 = map(int, m.groups())
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"wrk saw {errors.group(1)} failed writes:\n{out}")
    return req / (dur / 1e6), p50, p99


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--herd-bin", required=True)
    ap.add_argument("--plugins", required=True, help="directory with the built plugins")
    ap.add_argument("--lua", required=True)
    ap.add_argument("--writes", type=int, default=3000)
    ap.add_argument("--duration", default="8s")
    ap.add_argument("--commit", default="?")
    ap.add_argument("--command", default="bash tests/bench/plugins.sh")
    ap.add_argument("--out")
    a = ap.parse_args()
    c_wasm = os.path.join(a.plugins, "json-schema.wasm")
    py_wasm = os.path.join(a.plugins, "json-schema-py.wasm")
    nginx = os.path.join(a.plugins, "nginx-upstream.wasm")
    work = tempfile.mkdtemp(prefix="herd-plugin-bench-")
    try:
        data = os.path.join(work, "data")
        node = Node(a.herd_bin, data)
        node.call("PUT", "/v1/kv/schemas/bench", json.dumps(SCHEMA))
        rows = {}
        for label, setup in [
            ("no plugin", None),
            ("C validator (json-schema)", ("json-schema", c_wasm)),
            ("Python validator (json-schema-py)", ("json-schema-py", py_wasm)),
        ]:
            if setup:
                node.install(setup[0], setup[1], {"prefixes": ["/bench"], "hooks": ["validate"]})
                # The plugin really judges: a too-long value is refused.
                st, _ = node.call("PUT", "/v1/kv/bench/k0", json.dumps("x" * 1001), ok=None)
                assert st == 422, st
            log(f"latency: {label}")
            latency(node, 200)
            h0 = hooks(node)
            lat = latency(node, a.writes)
            # The same PUT with ?dry_run: every check a write makes, the hooks included, but no
            # log append and no disk sync, so the hook's cost is not lost in fdatasync's noise.
            latency(node, 200, "/v1/kv/bench/k0?dry_run")
            dry = latency(node, a.writes, "/v1/kv/bench/k0?dry_run")
            log(f"throughput: {label}")
            rps, wp50, wp99 = throughput(node, "wrk", a.lua, a.duration)
            h1 = hooks(node)
            inproc = "-"
            if setup:
                inproc = f"{(h1['total_us'] - h0['total_us']) / (h1['writes'] - h0['writes']):.1f} µs"
            rows[label] = (pct(lat, 0.5), pct(lat, 0.99), rps, wp50, wp99, pct(dry, 0.5), inproc)
            if setup:
                node.remove(setup[0])

        log("derive latency")
        node.install("nginx-upstream", nginx, {"prefixes": ["/services"], "hooks": ["derive"],
                                               "output": "/rendered/nginx"})
        derive = []
        for i in range(40):
            addr = f"10.9.{i // 200}.{i % 200 + 1}"
            t = time.perf_counter()
            node.call("PUT", f"/v1/kv/services/web/i{i}", json.dumps({"address": addr, "port": 80}))
            while True:
                st, body = node.call("GET", "/v1/kv/rendered/nginx/web.conf", ok=None)
                if st == 200 and f"{addr}:80" in json.loads(body):
                    break
                time.sleep(0.0005)
            derive.append((time.perf_counter() - t) * 1e3)

        log("restart with the Python validator installed")
        node.install("json-schema-py", py_wasm, {"prefixes": ["/bench"], "hooks": ["validate"]})
        size = os.path.getsize(py_wasm)
        restarts = {}
        for label, wipe in [("compiled code cached", False), ("cache wiped (compiles)", True)]:
            times = []
            for _ in range(3 if not wipe else 1):
                node.stop()
                if wipe:
                    shutil.rmtree(os.path.join(data, "plugins", "cache"))
                node.start()
                st, _ = node.call("PUT", "/v1/kv/bench/k0", json.dumps("x" * 1001), ok=None)
                assert st == 422, st
                times.append(time.monotonic() - node.spawned)
            restarts[label] = times
        node.stop()

        base = rows["no plugin"][5]
        out = [f"### Plugins (commit {a.commit})", "",
               f"Command: `{a.command}`. Release build; one node; writes of a 64-byte JSON string "
               "to `/bench/k0`, which a schema (`type: string, maxLength: 1000`) guards.", "",
               "Sequential PUTs over one keep-alive connection: `write` is a stored write (synced to "
               "disk), `dry run` the same PUT with `?dry_run` (every check, the hooks included, "
               "without the log append and sync); the added p50 is the dry-run p50 minus the "
               "no-plugin dry-run p50 of this run. `hook time` is the node's own measure of the time the "
               "hooks added per write (mean over the row's sequential and dry-run PUTs, from `hooks` in "
               "`GET /v1/plugins`), without the network's jitter.", "",
               "| setup | write p50 | write p99 | dry run p50 | added p50 | hook time (mean) | wrk PUT/s (c=16) | wrk p50 | wrk p99 |",
               "|---|---|---|---|---|---|---|---|---|"]
        for label, (p50, p99, rps, wp50, wp99, dp50, inproc) in rows.items():
            added = "-" if label == "no plugin" else f"{dp50 - base:.0f} µs"
            out.append(f"| {label} | {p50:.0f} µs | {p99:.0f} µs | {dp50:.0f} µs | {added} | {inproc} | {rps:,.0f} | "
                       f"{wp50 / 1000:.2f} ms | {wp99 / 1000:.2f} ms |")
        out += ["", "| derive (PUT → rendered output visible) | p50 | p99 | max |", "|---|---|---|---|",
                f"| nginx-upstream, 40 registrations one by one | {pct(derive, 0.5):.1f} ms | "
                f"{pct(derive, 0.99):.1f} ms | {max(derive):.1f} ms |", "",
                f"| restart with json-schema-py installed ({size / 1e6:.1f} MB component) | runs | "
                "spawn → first judged write |", "|---|---|---|"]
        for label, times in restarts.items():
            out.append(f"| {label} | {len(times)} | " + ", ".join(f"{t:.2f} s" for t in times) + " |")
        c_added = rows["C validator (json-schema)"][5] - base
        py_added = rows["Python validator (json-schema-py)"][5] - base
        c_in = rows["C validator (json-schema)"][6]
        py_in = rows["Python validator (json-schema-py)"][6]
        cached = max(restarts["compiled code cached"])
        verdict = lambda ok: "met" if ok else "NOT met"
        out += ["", f"Targets: C validator adds < 50 µs at p50: end to end (dry-run p50 delta) "
                f"{verdict(c_added < 50)} ({c_added:.0f} µs), hook time {c_in}; Python validator "
                f"< 2 ms: end to end {verdict(py_added < 2000)} ({py_added:.0f} µs), hook time "
                f"{py_in}; restart with the cached Python plugin < 1 s: {verdict(cached < 1)} "
                f"({cached:.2f} s).", ""]
        text = "\n".join(out)
        print(text)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
