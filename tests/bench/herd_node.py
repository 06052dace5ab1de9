"""A `herd serve` child for the benchmark drivers, with an admin HTTPS client.

Used by tests/bench/mount_bench.py and tests/bench/plugins_bench.py (imported from the script's
own directory).
"""

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time


class Node:
    """Starts `herd serve --data-dir DATA --api-addr 127.0.0.1:0 EXTRA_ARGS...` and waits until
    it wrote its API address to DATA/node.json and `ready()` is true (at most `deadline` s)."""

    def __init__(self, herd, data, extra_args=(), ready=lambda: True, deadline=120):
        self.herd, self.data = herd, data
        self.extra_args, self.ready, self.deadline = list(extra_args), ready, deadline
        self.start()

    def start(self):
        try:
            os.remove(os.path.join(self.data, "node.json"))
        except FileNotFoundError:
            pass
        self.log = open(os.path.join(os.path.dirname(self.data), "herd.log"), "a")
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            [self.herd, "serve", "--data-dir", self.data, "--api-addr", "127.0.0.1:0",
             *self.extra_args],
            stdout=self.log, stderr=self.log, env=dict(os.environ, HERD_LOG="warn"))
        deadline = time.time() + self.deadline
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"herd serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with open(os.path.join(self.data, "node.json")) as f:
                    self.api = json.load(f)["api"]
                if self.ready():
                    break
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            if time.time() > deadline:
                sys.exit(f"herd serve did not start within {self.deadline} s")
            time.sleep(0.002)
        host, port = self.api.removeprefix("https://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.ctx = ssl.create_default_context(cafile=os.path.join(self.data, "tls", "ca.crt"))
        self.conn = http.client.HTTPSConnection(host, self.port, context=self.ctx)
        with open(os.path.join(self.data, "admin.token")) as f:
            self.token = f.read().strip()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)

    def call(self, method, path, body=None, ctype="application/json", ok=(200, 201)):
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = ctype
        while True:
            try:
                self.conn.request(method, path, body=body, headers=headers)
                r = self.conn.getresponse()
                data = r.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx)
        if ok and r.status not in ok:
            sys.exit(f"{method} {path}: {r.status} {data[:300]!r}")
        return r.status, data
