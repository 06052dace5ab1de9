#!/usr/bin/env python3
"""Loads keys into a server for the single-node benchmark (tests/bench/single-node.sh).

Two modes, both over keep-alive HTTPS connections (several in parallel, one per thread):

  prefill  one request per key, so the GET runs read keys that exist:
             herd/ceiling: PUT /v1/kv/bench/k<N> with a JSON string of --value-bytes bytes
             etcd:         POST /v3/kv/put {"key": base64("bench/k<N>"), "value": base64(value)}
  batch    herd only: POST /v1/batch with --batch put ops per request, paths /m/k<N zero-padded>,
           each value a distinct JSON string of --value-bytes bytes (quotes included)
  readback herd only: GET the first and the last key written by `batch` (same --keys and
           --value-bytes) and check their values; exits non-zero with what was read otherwise

Prints one JSON line: {"keys", "key_bytes", "value_bytes", "seconds"} where key_bytes is the sum of
path lengths and value_bytes the sum of the values' JSON text lengths. Exits non-zero, with the
server's answer, on the first request that does not answer 200.
"""

import argparse
import base64
import http.client
import json
import ssl
import sys
import threading
import time


def ssl_context(cacert):
    if cacert:
        ctx = ssl.create_default_context(cafile=cacert)
    else:
        # etcd --auto-tls and the ceiling use self-signed certificates: loopback only, no checks.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Client:
    """One keep-alive HTTPS connection; reconnects once if the server closed it between requests."""

    def __init__(self, host, port, ctx, token, timeout):
        self.host, self.port, self.ctx, self.token, self.timeout = host, port, ctx, token, timeout
        self.conn = None

    def request(self, method, path, body):
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(
                    self.host, self.port, context=self.ctx, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                return resp.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


def json_string(text_len, seed):
    """A JSON string whose text (quotes included) is exactly text_len bytes, distinct per seed."""
    inner = max(text_len - 2, 0)
    s = str(seed)
    if len(s) >= inner:
        body = s[-inner:] if inner else ""
    else:
        body = "v" * (inner - len(s)) + s
    return '"' + body + '"'


def batch_path(k, keys):
    """Path of key k (1-based) in batch mode: /m/k0000001, at least 7 digits."""
    return "/m/k%0*d" % (max(7, len(str(keys))), k)


def run_parallel(jobs, conns, worker):
    """Runs worker(client_index, job) for every job over `conns` threads; re-raises an error."""
    errors = []
    lock = threading.Lock()
    next_job = [0]

    def thread_main(i):
        try:
            while True:
                with lock:
                    if errors or next_job[0] >= len(jobs):
                        return
                    job = jobs[next_job[0]]
                    next_job[0] += 1
                worker(i, job)
        except BaseException as e:  # noqa: BLE001 -- reported below, stops the other threads
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=thread_main, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["prefill", "batch", "readback"])
    p.add_argument("--url", required=True, help="https://127.0.0.1:PORT")
    p.add_argument("--kind", choices=["herd", "ceiling", "etcd"], default="herd")
    p.add_argument("--cacert", help="CA certificate to trust (default: no verification)")
    p.add_argument("--token", help="bearer token (herd, ceiling)")
    p.add_argument("--keys", type=int, required=True, help="number of keys")
    p.add_argument("--value-bytes", type=int, default=256, help="JSON text length of each value")
    p.add_argument("--batch", type=int, default=2000, help="ops per /v1/batch request")
    p.add_argument("--conns", type=int, default=8, help="parallel connections")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    a = p.parse_args()

    if not a.url.startswith("https://"):
        sys.exit("load_keys: --url must be https://HOST:PORT, got " + a.url)
    hostport = a.url[len("https://"):].rstrip("/")
    host, _, port = hostport.rpartition(":")
    ctx = ssl_context(a.cacert)
    clients = [Client(host, int(port), ctx, a.token, a.timeout) for _ in range(a.conns)]
    totals = {"key_bytes": 0, "value_bytes": 0}
    totals_lock = threading.Lock()

    def check(status, data, what):
        if status != 200:
            raise RuntimeError("%s answered %d, expected 200: %s"
                               % (what, status, data[:300].decode("utf-8", "replace")))

    if a.mode == "prefill":
        value = json_string(a.value_bytes, "")
        value_b64 = base64.b64encode(value.encode()).decode()
        chunk = 100
        jobs = [range(i, min(i + chunk, a.keys)) for i in range(0, a.keys, chunk)]

        def worker(ci, keys):
            c = clients[ci]
            kb = vb = 0
            for k in keys:
                if a.kind == "etcd":
                    key = "bench/k%d" % k
                    key_b64 = base64.b64encode(key.encode()).decode()
                    body = json.dumps({"key": key_b64, "value": value_b64})
                    status, data = c.request("POST", "/v3/kv/put", body)
                else:
                    key = "/bench/k%d" % k
                    status, data = c.request("PUT", "/v1/kv" + key, value)
                check(status, data, "PUT " + key)
                kb += len(key)
                vb += len(value)
            with totals_lock:
                totals["key_bytes"] += kb
                totals["value_bytes"] += vb
    elif a.mode == "readback":
        if a.kind != "herd":
            sys.exit("load_keys: readback mode is for herd only")
        bad = []
        for k in sorted({1, a.keys}):
            path = batch_path(k, a.keys)
            want = json_string(a.value_bytes, k)
            status, data = clients[0].request("GET", "/v1/kv" + path, None)
            got = data.decode("utf-8", "replace").strip()
            if status != 200 or got != want:
                bad.append("%s answered %d %r, expected 200 %s" % (path, status, got[:200], want))
        if bad:
            sys.exit("load_keys: read-back failed: " + "; ".join(bad))
        print(json.dumps({"keys_checked": len({1, a.keys})}))
        return
    else:
        if a.kind != "herd":
            sys.exit("load_keys: batch mode is for herd only")
        jobs = [range(i, min(i + a.batch, a.keys + 1)) for i in range(1, a.keys + 1, a.batch)]

        def worker(ci, keys):
            ops = []
            kb = vb = 0
            for k in keys:
                path = batch_path(k, a.keys)
                value = json_string(a.value_bytes, k)
                ops.append('{"op":"put","path":"%s","value":%s}' % (path, value))
                kb += len(path)
                vb += len(value)
            body = '{"ops":[' + ",".join(ops) + "]}"
            status, data = clients[ci].request("POST", "/v1/batch", body)
            check(status, data, "POST /v1/batch (keys %d..%d)" % (keys[0], keys[-1]))
            with totals_lock:
                totals["key_bytes"] += kb
                totals["value_bytes"] += vb

    start = time.monotonic()
    try:
        run_parallel(jobs, a.conns, worker)
    except Exception as e:  # noqa: BLE001 -- one clear line for the shell script
        sys.exit("load_keys: %s" % e)
    seconds = time.monotonic() - start
    print(json.dumps({"keys": a.keys, "key_bytes": totals["key_bytes"],
                      "value_bytes": totals["value_bytes"], "seconds": round(seconds, 3)}))


if __name__ == "__main__":
    main()
