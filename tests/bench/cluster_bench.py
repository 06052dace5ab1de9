#!/usr/bin/env python3
"""The cluster benchmark driver (run it through tests/bench/cluster.sh; needs root).

Builds a 4-host network-namespace lab (tests/lab/lab.py: hosts on one bridge, nothing in the root
namespace, so mDNS multicast never leaves the machine) and starts `herd serve` on hosts 1-3 with
one cluster secret, mDNS on the lab interface only (no static seeds) and real lab addresses. Then,
in one run:

  0. discovery: time until every node lists the other two as alive peers;
  1. replication latency: PUT on node 1 -> the `put` event on node 2's and node 3's watch
     streams, timed by one process on one monotonic clock (its sockets are opened inside the
     hosts' namespaces with setns(2)); sequential writes (each waits for both events), then
     writes paced at a fixed rate over several connections; the keys are deleted afterwards;
     load: N keys (/m/k0000001.., 256-byte JSON strings) into node 1 by /v1/batch, then the time
     until the three digests are equal (push replication, anti-entropy for anything missed);
  2. anti-entropy repair bytes (several runs): host 3 cut off, 1% of the keys changed on node 1
     (half new keys, half updates) once node 1 and 2 have stopped pushing to node 3, healed; the
     sum over nodes of herd_anti_entropy_bytes_total until all digests are equal, against the
     bytes of the differing registers (key + value + 29-byte register head each);
  3. convergence after a partition {1} | {2,3} held for P seconds with a steady write rate on
     node 1 and on node 2 (overlapping keys): time from heal to equal digests;
  4. a new empty node on host 4: time from its spawn until its digest equals the others'.

Progress goes to stderr, the markdown report to stdout (and to --out). Exit status: 0 when every
measurement completed (missed targets are flagged in the report), 3 when one did not complete
(lost events, no convergence before the deadline; flagged too), 1 on a setup failure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "lab"))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # leave no __pycache__ in the repository

from lab import Lab, LabError, check_environment, in_netns  # noqa: E402
from load_keys import json_string, run_parallel  # noqa: E402

API_PORT = 7440
PEER_PORT = 7441
CLUSTER = "bench"
ENV = "bench"
LAB_IF = "eth0"
REGISTER_HEAD = 29  # tag, millis, counter, node, expiry (store/register.rs)
VALUE_BYTES = 256  # JSON text of every value written (a JSON string, quotes included)
LOAD_BATCH = 2000  # ops per /v1/batch request
LOAD_CONNS = 2
DIGEST_POLL = 0.02  # seconds between digest sweeps
EVENT_TIMEOUT = 5.0  # a replicated event later than this counts as lost
LATENCY_TARGET_MS = 10.0
REPAIR_FACTOR = 3.0
REPAIR_SLACK = 64 * 1024
NEW_NODE_TARGET_S = 5.0
LAT_PREFIX = "/lat"
PUSH_TASK_WAKE = 1.5  # a push task checks its peer is alive at least every second (cluster.rs)


def log(msg: str) -> None:
    print("[cluster-bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def now() -> float:
    return time.perf_counter()  # CLOCK_MONOTONIC


class BenchError(RuntimeError):
    """A setup step or a measurement failed; the message says which and why."""


# ----------------------------------------------------------------------------- values, stats


def key_path(k: int) -> str:
    return "/m/k%07d" % k


def register_bytes(path: str, value_text_len: int) -> int:
    """Bytes of one leaf register as the brief counts them: key (segments joined by NUL, so the
    path without its leading '/'), value text, and the register head."""
    return (len(path) - 1) + value_text_len + REGISTER_HEAD


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    if not s:
        return float("nan")
    rank = max(1, -(-len(s) * p // 100))  # nearest rank
    return s[int(rank) - 1]


def ms(x: float) -> str:
    if x != x:
        return "—"
    return "%.2f ms" % x if x < 10 else "%.1f ms" % x if x < 100 else "%.0f ms" % x


def secs(x: float | None) -> str:
    if x is None:
        return "—"
    return "%.2f s" % x if x < 10 else "%.1f s" % x


def nbytes(n: float) -> str:
    return "{:,.0f} B".format(n)


def kib(n: float) -> str:
    return "%.1f KiB" % (n / 1024)


def yes_no(ok: bool) -> str:
    return "yes" if ok else "**NO**"


# ----------------------------------------------------------------------------- HTTP clients


class NsHTTPSConnection(http.client.HTTPSConnection):
    """http.client's HTTPS connection with its socket opened inside a network namespace."""

    def __init__(self, ns: str, host: str, port: int, context: ssl.SSLContext, timeout: float):
        super().__init__(host, port, context=context, timeout=timeout)
        self.ns = ns

    def connect(self) -> None:
        with in_netns(self.ns):
            super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Api:
    """A keep-alive HTTPS client of one node's API (one per thread)."""

    def __init__(self, node: "Node", timeout: float = 60.0):
        self.node = node
        self.timeout = timeout
        self.conn: NsHTTPSConnection | None = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body: bytes | None = None, auth: bool = True,
                ok: tuple[int, ...] = (200,)) -> tuple[int, bytes]:
        headers = {}
        if auth:
            headers["Authorization"] = "Bearer " + self.node.token()
        if body is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = NsHTTPSConnection(self.node.ns, self.node.addr, API_PORT,
                                              self.node.ssl_context(), self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError,
                    BrokenPipeError, ssl.SSLEOFError):
                self.close()
                if attempt == 1:
                    raise
        if ok and resp.status not in ok:
            raise BenchError("%s %s on node %d answered %d: %s"
                             % (method, path, self.node.i, resp.status, data[:300].decode("utf-8", "replace")))
        return resp.status, data

    def json(self, method: str, path: str, body: bytes | None = None):
        return json.loads(self.request(method, path, body)[1])

    def status(self) -> dict:
        return self.json("GET", "/v1/status")

    def digest(self) -> tuple[int, str]:
        d = self.status()["digest"]
        return d["registers"], d["hash"]

    def metrics(self) -> dict[str, float]:
        text = self.request("GET", "/metrics")[1].decode()
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def members(self) -> dict[str, dict]:
        """The peers this node knows, by node id (GET /v1/members)."""
        return {m["node_id"]: m for m in self.json("GET", "/v1/members").get("members", [])}

    def alive_peers(self) -> set[str]:
        return {i for i, m in self.members().items() if m.get("state") == "alive"}


class RawConn:
    """One HTTPS connection driven by the latency test's select loop (no threads, one clock).

    Requests are written whole; answers are parsed incrementally from what select() says is
    readable: complete responses (Content-Length or chunked) for a writer, the server-sent
    events of a watch stream for a watcher.
    """

    def __init__(self, node: "Node"):
        self.node = node
        with in_netns(node.ns):
            raw = socket.create_connection((node.addr, API_PORT), timeout=10)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = node.ssl_context().wrap_socket(raw, server_hostname=node.addr)
        # Non-blocking from here on: select() also wakes for TLS records that carry no data
        # (TLS 1.3 session tickets), and a blocking recv() would then return b"" as if at EOF.
        self.sock.setblocking(False)
        self.buf = bytearray()
        # watch stream state
        self.head: tuple[int, dict] | None = None
        self.chunked = False
        self.chunk_left = 0
        self.need_crlf = False
        self.sse = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def pending(self) -> bool:
        return self.sock.pending() > 0

    def recv(self) -> None:
        """Appends what is readable now to the buffer (possibly nothing)."""
        while True:
            try:
                data = self.sock.recv(1 << 18)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            if not data:
                raise BenchError("node %d closed a benchmark connection" % self.node.i)
            self.buf += data
            if not self.sock.pending():
                return

    def send(self, method: str, path: str, body: bytes = b"") -> None:
        head = ("%s %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                % (method, path, self.node.addr, API_PORT, self.node.token()))
        if body:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        self.sock.setblocking(True)
        try:
            self.sock.sendall((head + "\r\n").encode() + body)
        finally:
            self.sock.setblocking(False)

    def _take_head(self) -> tuple[int, dict] | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[:end + 4]
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        return status, headers

    def responses(self) -> list[tuple[int, bytes]]:
        """Complete responses now in the buffer (for a connection sending requests)."""
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            pos = end + 4
            if "content-length" in headers:
                n = int(headers["content-length"])
                if len(self.buf) < pos + n:
                    return out
                body = bytes(self.buf[pos:pos + n])
                del self.buf[:pos + n]
            elif "chunked" in headers.get("transfer-encoding", ""):
                body = bytearray()
                while True:
                    le = self.buf.find(b"\r\n", pos)
                    if le < 0:
                        return out
                    size = int(bytes(self.buf[pos:le]).split(b";")[0], 16)
                    if len(self.buf) < le + 2 + size + 2:
                        return out
                    body += self.buf[le + 2:le + 2 + size]
                    pos = le + 2 + size + 2
                    if size == 0:
                        break
                del self.buf[:pos]
                body = bytes(body)
            else:
                body = b""
                del self.buf[:pos]
            out.append((int(lines[0].split()[1]), body))

    def events(self) -> list[tuple[str, bytes]]:
        """(event, data) pairs of the watch stream now complete in the buffer."""
        if self.head is None:
            self.head = self._take_head()
            if self.head is None:
                return []
            status, headers = self.head
            if status != 200:
                raise BenchError("watch on node %d answered %d: %s"
                                 % (self.node.i, status, bytes(self.buf[:300]).decode("utf-8", "replace")))
            self.chunked = "chunked" in headers.get("transfer-encoding", "")
        if self.chunked:
            while True:
                if self.chunk_left:
                    take = min(self.chunk_left, len(self.buf))
                    self.sse += self.buf[:take]
                    del self.buf[:take]
                    self.chunk_left -= take
                    if self.chunk_left:
                        break
                    self.need_crlf = True
                if self.need_crlf:
                    if len(self.buf) < 2:
                        break
                    del self.buf[:2]
                    self.need_crlf = False
                le = self.buf.find(b"\r\n")
                if le < 0:
                    break
                size = int(bytes(self.buf[:le]).split(b";")[0], 16)
                del self.buf[:le + 2]
                if size == 0:
                    raise BenchError("node %d ended a watch stream" % self.node.i)
                self.chunk_left = size
        else:
            self.sse += self.buf
            self.buf.clear()
        out = []
        while True:
            i = self.sse.find(b"\n\n")
            if i < 0:
                return out
            block = bytes(self.sse[:i])
            del self.sse[:i + 2]
            event, data = "", []
            for line in block.split(b"\n"):
                if line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"data:"):
                    data.append(line[5:].strip())
            if event or data:
                out.append((event, b"\n".join(data)))


# ----------------------------------------------------------------------------- nodes


class Node:
    def __init__(self, bench: "Bench", i: int):
        self.bench = bench
        self.i = i
        self.addr = bench.lab.addr(i)
        self.ns = bench.lab.ns(i)
        self.dir = os.path.join(bench.tmp, "n%d" % i)
        self.logpath = os.path.join(bench.tmp, "n%d.log" % i)
        self.proc: subprocess.Popen | None = None
        self.spawned_at = 0.0
        self.node_id = ""
        self._token: str | None = None
        self._ctx: ssl.SSLContext | None = None
        self.api: Api | None = None

    def argv(self) -> list[str]:
        b = self.bench
        argv = [b.args.herd_bin, "serve", "--data-dir", self.dir,
                "--api-addr", "%s:%d" % (self.addr, API_PORT),
                "--peer-addr", "%s:%d" % (self.addr, PEER_PORT),
                "--tls-san", self.addr, "--cluster", CLUSTER, "--env", ENV,
                "--cluster-secret", b.secret, "--mdns-interface", LAB_IF,
                "--anti-entropy-interval", b.args.anti_entropy_interval]
        return argv

    def start(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        logf = open(self.logpath, "ab")
        env = dict(os.environ, HERD_LOG=os.environ.get("HERD_LOG", "info"))
        self.spawned_at = now()
        self.proc = self.bench.lab.popen(self.i, self.argv(), stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, env=env)
        logf.close()

    def token(self) -> str:
        if self._token is None:
            with open(os.path.join(self.dir, "admin.token")) as f:
                self._token = f.read().strip()
        return self._token

    def ssl_context(self) -> ssl.SSLContext:
        if self._ctx is None:
            self._ctx = ssl.create_default_context(cafile=os.path.join(self.dir, "tls", "ca.crt"))
        return self._ctx

    def check_running(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError("node %d (herd serve) exited with status %d" % (self.i, self.proc.returncode))

    def wait_ready(self, deadline_s: float = 60.0) -> float:
        """Waits until /v1/health answers 200; returns seconds since the spawn."""
        end = now() + deadline_s
        last = "no answer yet"
        while now() < end:
            self.check_running()
            if (os.path.exists(os.path.join(self.dir, "admin.token"))
                    and os.path.exists(os.path.join(self.dir, "tls", "ca.crt"))):
                api = Api(self, timeout=2.0)
                try:
                    status, _ = api.request("GET", "/v1/health", auth=False, ok=())
                    if status == 200:
                        ready = now() - self.spawned_at
                        self.api = Api(self)
                        self.node_id = self.api.status()["node_id"]
                        return ready
                    last = "status %d" % status
                except (OSError, http.client.HTTPException, ssl.SSLError) as e:
                    last = "%s: %s" % (type(e).__name__, e)
                    self._ctx = None  # the CA may have been half-written
                finally:
                    api.close()
            time.sleep(0.01)
        raise BenchError("node %d not ready after %.0f s (last: %s)" % (self.i, deadline_s, last))

    def log_tail(self, n: int = 20) -> str:
        try:
            with open(self.logpath, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])


# ----------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args):
        self.args = args
        self.lab: Lab | None = None
        self.tmp = ""
        self.secret = ""
        self.nodes: dict[int, Node] = {}
        self.results: dict = {}
        self.incomplete: list[str] = []
        self.started = now()
        self.ae_interval_s = parse_duration(args.anti_entropy_interval)

    # -------------------------------------------------------------- helpers

    def sweep(self, nodes: list[Node]) -> list[tuple[int, str]]:
        for n in nodes:
            n.check_running()
        return [n.api.digest() for n in nodes]

    def wait_equal(self, nodes: list[Node], t0: float, deadline_s: float, what: str,
                   also=None) -> tuple[float | None, list]:
        """Polls the digests of `nodes` until they are all equal; returns (seconds since t0, the
        digests), or (None, last digests) after deadline_s. A sweep reads the nodes one after the
        other, so equality is timed at the end of the sweep that found it (an upper bound, within
        DIGEST_POLL plus one sweep). `also(t)` runs after each sweep."""
        while True:
            ds = self.sweep(nodes)
            t = now()
            if also is not None:
                also(t)
            if all(d == ds[0] for d in ds):
                return t - t0, ds
            if now() - t0 > deadline_s:
                log("%s: digests still differ after %.0f s: %s" % (what, deadline_s, ds))
                return None, ds
            time.sleep(DIGEST_POLL)

    def metrics(self, nodes: list[Node]) -> dict[int, dict[str, float]]:
        return {n.i: n.api.metrics() for n in nodes}

    @staticmethod
    def delta(before: dict[int, dict], after: dict[int, dict], name: str) -> dict[int, float]:
        return {i: after[i].get(name, 0.0) - before.get(i, {}).get(name, 0.0) for i in after}

    def load(self, node: Node, keys: list[int], seed_base: int) -> float:
        """Puts /m/k<k> for every k (batches over LOAD_CONNS connections); returns seconds."""
        jobs = [keys[i:i + LOAD_BATCH] for i in range(0, len(keys), LOAD_BATCH)]
        apis = [Api(node) for _ in range(LOAD_CONNS)]

        def worker(i: int, job: list[int]) -> None:
            ops = ",".join('{"op":"put","path":"%s","value":%s}'
                           % (key_path(k), json_string(VALUE_BYTES, seed_base + k)) for k in job)
            apis[i].request("POST", "/v1/batch", ('{"ops":[' + ops + "]}").encode())

        t0 = now()
        try:
            run_parallel(jobs, LOAD_CONNS, worker)
        finally:
            for api in apis:
                api.close()
        return now() - t0

    # -------------------------------------------------------------- phases

    def setup(self) -> None:
        a = self.args
        self.tmp = tempfile.mkdtemp(prefix="herd-cluster-bench.", dir=a.tmp_dir)
        self.secret = os.path.join(self.tmp, "cluster.secret")
        r = subprocess.run([a.herd_bin, "cluster", "init", "--out", self.secret],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError("herd cluster init failed: %s" % (r.stderr.strip() or r.stdout.strip()))
        self.lab = Lab(4)
        log("lab %s on %s; temp dir %s" % (self.lab.prefix, self.lab.subnet, self.tmp))
        for i in (1, 2, 3):
            self.nodes[i] = Node(self, i)
        t0 = now()
        for n in self.nodes.values():
            n.start()
        ready = [n.wait_ready() for n in self.nodes.values()]
        log("nodes 1-3 answer /v1/health (slowest %.2f s after spawn); waiting for mDNS discovery"
            % max(ready))
        self.wait_mesh(list(self.nodes.values()), 60, "mDNS discovery")
        disc = now() - t0
        self.results["discovery_s"] = disc
        log("every node sees the other two alive %.2f s after the first spawn" % disc)

    def phase_load(self) -> None:
        a = self.args
        n1 = self.nodes[1]
        log("loading %d keys of %d-byte values into node 1 (/v1/batch, %d ops each)"
            % (a.keys, VALUE_BYTES, LOAD_BATCH))
        m0 = self.metrics(list(self.nodes.values()))
        load_s = self.load(n1, list(range(1, a.keys + 1)), 0)
        t_loaded = now()
        repl_s, ds = self.wait_equal(list(self.nodes.values()), t_loaded, 180, "load")
        m1 = self.metrics(list(self.nodes.values()))
        if repl_s is None:
            raise BenchError("nodes 2 and 3 did not reach node 1's digest within 180 s of the load")
        self.results["load"] = {
            "keys": a.keys, "load_s": load_s, "replicated_after_s": repl_s, "registers": ds[0][0],
            "push_bytes": sum(self.delta(m0, m1, "herd_peer_push_bytes_total").values()),
            "ae_bytes": sum(self.delta(m0, m1, "herd_anti_entropy_bytes_total").values()),
        }
        log("loaded in %.1f s; all digests equal %.2f s later (%d registers)"
            % (load_s, repl_s, ds[0][0]))

    def phase_latency(self) -> None:
        a = self.args
        writer_node = self.nodes[1]
        watchers = [RawConn(self.nodes[2]), RawConn(self.nodes[3])]
        conns: list[RawConn] = list(watchers)
        try:
            self.start_watches(watchers, 10)
            res = {}
            log("replication latency: %d warm-up writes, then %d sequential writes"
                % (a.warmup_writes, a.lat_writes))
            one = [RawConn(writer_node)]
            conns += one
            self.latency_run(one, watchers, a.warmup_writes, "w", sequential=True)
            res["seq"] = self.measured_latency_run(one, watchers, a.lat_writes, "s", True)
            self.log_latency("sequential", res["seq"])
            if a.concurrency > 1:
                log("replication latency: %d writes at %g/s over %d connections"
                    % (a.lat_writes, a.conc_rate, a.concurrency))
                many = one + [RawConn(writer_node) for _ in range(a.concurrency - 1)]
                conns += many[1:]
                res["conc"] = self.measured_latency_run(many, watchers, a.lat_writes, "c", False,
                                                        a.conc_rate)
                self.log_latency("%d connections" % a.concurrency, res["conc"])
            self.results["latency"] = res
        finally:
            for c in conns:
                c.close()
        # Drop the latency keys again (one tombstone), so later phases see the N loaded keys.
        writer_node.api.request("DELETE", "/v1/kv" + LAT_PREFIX)
        t0 = now()
        if self.wait_equal(list(self.nodes.values()), t0, 30, "after latency")[0] is None:
            raise BenchError("digests differ 30 s after the latency test")

    @staticmethod
    def start_watches(watchers: list[RawConn], deadline_s: float) -> None:
        """Starts a watch of LAT_PREFIX on each connection and waits for every `synced`."""
        for w in watchers:
            w.send("GET", "/v1/watch" + LAT_PREFIX)
        synced = set()
        end = now() + deadline_s
        while len(synced) < len(watchers):
            if now() > end:
                raise BenchError("watch streams did not all send `synced` within %.0f s" % deadline_s)
            r = [w for w in watchers if w.pending()] or select.select(watchers, [], [], 1.0)[0]
            for w in r:
                w.recv()
                if any(ev == "synced" for ev, _ in w.events()):
                    synced.add(w)

    def measured_latency_run(self, writers, watchers, n, tag, sequential, rate=None) -> dict:
        """latency_run, plus each node's mean commit time (write-ahead log append and sync, from
        herd_commit_seconds_total / herd_commits_total) over the run, to tell slow disks apart."""
        nodes = [self.nodes[i] for i in (1, 2, 3)]
        m0 = self.metrics(nodes)
        r = self.latency_run(writers, watchers, n, tag, sequential, rate)
        m1 = self.metrics(nodes)
        secs_ = self.delta(m0, m1, "herd_commit_seconds_total")
        commits = self.delta(m0, m1, "herd_commits_total")
        r["commit_ms"] = {i: (secs_[i] / commits[i] * 1000 if commits[i] else float("nan")) for i in commits}
        r["commits"] = commits
        return r

    def log_latency(self, label: str, r: dict) -> None:
        for j, name in ((0, "node 2"), (1, "node 3")):
            s = r["peer_ms"][j]
            log("  %s -> %s: p50 %s p99 %s max %s (%d lost)" % (label, name, ms(pct(s, 50)), ms(pct(s, 99)),
                                                              ms(max(s) if s else float("nan")), r["lost"][j]))
        log("  %s ack on node 1: p50 %s p99 %s; %.0f writes/s (%d sent late); client busy %.0f%%; "
            "mean commit on nodes 1/2/3: %s"
            % (label, ms(pct(r["ack_ms"], 50)), ms(pct(r["ack_ms"], 99)), r["rate"], r["late"],
               100 * r["client_busy"], " / ".join(ms(r["commit_ms"][i]) for i in sorted(r["commit_ms"]))))

    def latency_run(self, writers: list[RawConn], watchers: list[RawConn], n: int, tag: str,
                    sequential: bool, rate: float | None = None) -> dict:
        """n PUTs of distinct new keys under LAT_PREFIX from `writers`, each connection with at
        most one write in flight. Sequential: one writer, the next write once the last one is
        answered and every watcher has seen it. Paced (rate): write k is due at start + k/rate
        and goes out on any idle connection (late if none is idle). Returns latencies in ms."""
        sent: dict[str, float] = {}
        acked: dict[str, float] = {}
        seen: list[dict[str, float]] = [{} for _ in watchers]
        inflight: dict[RawConn, str] = {}
        idle: list[RawConn] = list(writers)
        is_writer = set(writers)
        k = 0
        late = 0
        seed = random.randrange(1 << 30)

        def path_of(i: int) -> str:
            return "%s/%s%06d" % (LAT_PREFIX, tag, i)

        def send(w: RawConn) -> None:
            nonlocal k
            path = path_of(k)
            body = json_string(VALUE_BYTES, seed + k).encode()
            k += 1
            t = now()
            w.send("PUT", "/v1/kv" + path, body)
            sent[path] = t
            inflight[w] = path

        conns = list(writers) + list(watchers)
        t_start = now()
        last_progress = t_start
        waited = 0.0  # time blocked in select(): the rest is this client's own work
        while len(acked) < n or any(len(s) < n for s in seen):
            # Send what is due.
            timeout = 0.5
            if sequential:
                if idle and k < n and (k == 0 or (path_of(k - 1) in acked
                                                  and all(path_of(k - 1) in s for s in seen))):
                    send(idle.pop())
            else:
                while idle and k < n:
                    if rate:
                        due = t_start + k / rate
                        t = now()
                        if t < due:
                            timeout = due - t
                            break
                        if t - due > 0.001:
                            late += 1
                    send(idle.pop())
            ready = [c for c in conns if c.pending()]
            if not ready:
                t_wait = now()
                ready = select.select(conns, [], [], timeout)[0]
                waited += now() - t_wait
            for c in ready:
                c.recv()
                t = now()
                last_progress = t
                if c in is_writer:
                    for status, body in c.responses():
                        path = inflight.pop(c)
                        if status != 200:
                            raise BenchError("PUT %s answered %d: %s" % (path, status, body[:200]))
                        acked[path] = t
                        idle.append(c)
                else:
                    got = seen[watchers.index(c)]
                    for ev, data in c.events():
                        if ev != "put":
                            continue
                        # {"type":"put","path":"/lat/..",...}: the path without a full JSON parse
                        i = data.find(b'"path":"') + 8
                        path = data[i:data.index(b'"', i)].decode()
                        if path in sent and path not in got:
                            got[path] = t
            if now() - last_progress > EVENT_TIMEOUT:
                if inflight:
                    raise BenchError("a PUT on node 1 was not answered within %.0f s" % EVENT_TIMEOUT)
                if sequential and k < n:
                    # The previous write's event never came: it counts as lost; go on.
                    send(idle.pop())
                    last_progress = now()
                    continue
                break
        elapsed = now() - t_start
        lost = [n - len(s) for s in seen]
        peer_ms = [[(s[p] - sent[p]) * 1000 for p in s] for s in seen]
        both_ms = [(max(s[p] for s in seen) - sent[p]) * 1000 for p in sent
                   if seen and all(p in s for s in seen)]
        ack_ms = [(acked[p] - sent[p]) * 1000 for p in acked]
        return {"n": n, "peer_ms": peer_ms, "both_ms": both_ms, "ack_ms": ack_ms, "lost": lost,
                "rate": n / elapsed if elapsed > 0 else 0.0, "writers": len(writers), "late": late,
                "client_busy": 1.0 - waited / elapsed if elapsed > 0 else 0.0}

    def wait_mesh(self, nodes: list[Node], deadline_s: float, what: str) -> float:
        """Waits until every node lists every other one alive; returns the seconds it took."""
        t0 = now()
        while True:
            missing = {}
            for n in nodes:
                n.check_running()
                lack = {m.node_id for m in nodes if m is not n} - n.api.alive_peers()
                if lack:
                    missing[n.i] = sorted(lack)
            if not missing:
                return now() - t0
            if now() - t0 > deadline_s:
                raise BenchError("%s: peers not all alive after %.0f s (missing: %s)"
                                 % (what, deadline_s, missing))
            time.sleep(0.05)

    def phase_repair(self) -> None:
        a = self.args
        nodes = [self.nodes[i] for i in (1, 2, 3)]
        diff = max(2, a.keys // 100)
        n_new, n_upd = diff // 2, diff - diff // 2
        runs = []
        for run in range(a.repair_runs):
            upd_keys = [1 + run + (j * a.keys) // n_upd for j in range(n_upd)]
            new_keys = [a.keys + 1 + run * n_new + j for j in range(n_new)]
            x = self.repair_run(nodes, upd_keys, new_keys, run + 1)
            runs.append(x)
        self.results["repair"] = {"keys": a.keys, "new": n_new, "updated": n_upd, "runs": runs}

    def repair_run(self, nodes: list[Node], upd_keys: list[int], new_keys: list[int], run: int) -> dict:
        a = self.args
        lab = self.lab
        reg_bytes = sum(register_bytes(key_path(k), VALUE_BYTES) for k in upd_keys + new_keys)
        self.wait_mesh(nodes, 60, "repair run %d" % run)
        log("anti-entropy repair, run %d of %d: host 3 cut off; waiting until nodes 1 and 2 count it out"
            % (run, a.repair_runs))
        m_cut = self.metrics(nodes)
        lab.partition([3])
        t_part = now()
        id3 = self.nodes[3].node_id
        # Write only once nodes 1 and 2 no longer count node 3 alive: their push tasks to it have
        # ended, so no push waits in a TCP queue to be delivered when the partition heals, and
        # all the repair is anti-entropy's.
        end = now() + 30
        while any(id3 in n.api.alive_peers() for n in nodes[:2]):
            if now() > end:
                raise BenchError("nodes 1 and 2 still list node 3 alive 30 s into the partition")
            time.sleep(0.05)
        detect_s = now() - t_part
        # A push task notices that its peer is no longer alive at the top of its loop, which it
        # reaches at least every second; one blocked waiting for changes would otherwise still
        # push the next write to the dead peer, and that push, stuck in TCP, lands at the heal.
        time.sleep(PUSH_TASK_WAKE)
        pushed0 = {n.i: n.api.members().get(id3, {}).get("pushed", 0) for n in nodes[:2]}
        self.load(self.nodes[1], sorted(upd_keys + new_keys), 1_000_000_000 * run)
        same12, ds = self.wait_equal(nodes[:2], now(), 30, "repair: node 2 by push")
        if same12 is None:
            raise BenchError("node 2 did not get node 1's writes by push within 30 s")
        if self.nodes[3].api.digest() == ds[0]:
            raise BenchError("node 3 has the writes made while it was cut off: the partition did not hold")
        m0 = self.metrics(nodes)
        t_heal = now()  # the heal is timed from its start: traffic resumes part-way through heal()
        lab.heal()
        heal_s = now() - t_heal
        conv, ds = self.wait_equal(nodes, t_heal, a.deadline, "repair")
        m1 = self.metrics(nodes)
        if conv is None:
            self.incomplete.append("anti-entropy repair run %d: digests not equal %.0f s after the heal"
                                   % (run, a.deadline))
        # Rounds still under way at that moment (a second repairer) finish within an interval.
        time.sleep(self.ae_interval_s * 1.2 + 0.3)
        m2 = self.metrics(nodes)
        pushed1 = {n.i: n.api.members().get(id3, {}).get("pushed", 0) for n in nodes[:2]}
        ae = self.delta(m0, m1, "herd_anti_entropy_bytes_total")
        push_bytes = sum(self.delta(m0, m2, "herd_peer_push_bytes_total").values())
        x = {
            "new": len(new_keys), "updated": len(upd_keys), "register_bytes": reg_bytes,
            # Registers that must cross: a new key once, an updated key twice (both versions).
            "crossing_bytes": reg_bytes + sum(register_bytes(key_path(k), VALUE_BYTES) for k in upd_keys),
            "push_interfered": push_bytes > 0 or sum(pushed1[i] - pushed0[i] for i in pushed0) > 0,
            "total": sum(ae.values()), "per_node": ae, "converged_s": conv,
            "settled": sum(self.delta(m0, m2, "herd_anti_entropy_bytes_total").values()),
            "rounds": self.delta(m0, m1, "herd_anti_entropy_rounds_total"),
            "merged": self.delta(m0, m1, "herd_merged_registers_total"),
            "push_bytes": push_bytes,
            "partition_s": t_heal - t_part, "detect_s": detect_s, "heal_s": heal_s,
            "rounds_cut": self.delta(m_cut, m0, "herd_anti_entropy_rounds_total"),
            "pushed_to_3": sum(pushed1[i] - pushed0[i] for i in pushed0),
        }
        log("  run %d: %s of anti-entropy (%s once settled) for %s of differing registers (%.2fx); "
            "equal %s after the heal; by node: %s%s"
            % (run, nbytes(x["total"]), nbytes(x["settled"]), nbytes(reg_bytes), x["total"] / reg_bytes,
               secs(conv), ", ".join("%d: %s in %d new rounds" % (i, nbytes(ae[i]), x["rounds"][i])
                                     for i in sorted(ae)),
               "; NOT COUNTED: %s of pushes reached node 3 after the heal" % nbytes(push_bytes)
               if x["push_interfered"] else ""))
        return x

    def phase_partition(self) -> None:
        a = self.args
        lab = self.lab
        nodes = [self.nodes[i] for i in (1, 2, 3)]
        hot = max(10, min(a.keys, 1000))
        log("partition {1} | {2,3} for %.0f s, %g writes/s on node 1 and on node 2 (keys /m/k1..%d)"
            % (a.partition_secs, a.write_rate, hot))
        stop = threading.Event()
        counts = {1: 0, 2: 0}
        errors: list[BaseException] = []

        def writer(i: int) -> None:
            api = Api(self.nodes[i])
            rng = random.Random(i)
            t_next = now()
            try:
                while not stop.is_set():
                    k = rng.randint(1, hot)
                    body = json_string(VALUE_BYTES, 2_000_000_000 + i * 100_000_000 + counts[i]).encode()
                    api.request("PUT", "/v1/kv" + key_path(k), body)
                    counts[i] += 1
                    t_next += 1.0 / a.write_rate
                    delay = t_next - now()
                    if delay > 0:
                        stop.wait(delay)
            except BaseException as e:  # noqa: BLE001 -- reported below
                errors.append(e)
            finally:
                api.close()

        self.wait_mesh(nodes, 60, "before the partition")
        lab.partition([1], [2, 3])
        t_part = now()
        threads = [threading.Thread(target=writer, args=(i,), daemon=True) for i in (1, 2)]
        for t in threads:
            t.start()
        while now() - t_part < a.partition_secs and not errors:
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join()
        if errors:
            raise BenchError("writes during the partition failed: %s" % errors[0])
        m0 = self.metrics(nodes)
        t_heal = now()
        lab.heal()
        heal_s = now() - t_heal
        log("healed after %.1f s (%d writes on node 1, %d on node 2); waiting for equal digests"
            % (t_heal - t_part, counts[1], counts[2]))
        first_contact = [None]
        id1 = self.nodes[1].node_id
        others = {self.nodes[2].node_id, self.nodes[3].node_id}

        def watch_contact(t: float) -> None:
            # The first exchange across the healed cut, as either side's members view shows it.
            if first_contact[0] is None and (
                    self.nodes[1].api.alive_peers() & others
                    or id1 in self.nodes[2].api.alive_peers() or id1 in self.nodes[3].api.alive_peers()):
                first_contact[0] = t - t_heal

        conv, ds = self.wait_equal(nodes, t_heal, a.deadline, "partition", also=watch_contact)
        m1 = self.metrics(nodes)
        if conv is None:
            self.incomplete.append("partition: digests not equal %.0f s after the heal" % a.deadline)
        self.results["partition"] = {
            "secs": t_heal - t_part, "writes": counts, "rate": a.write_rate, "hot": hot,
            "converged_s": conv, "contact_s": first_contact[0],
            "heal_s": heal_s,
            "ae_bytes": sum(self.delta(m0, m1, "herd_anti_entropy_bytes_total").values()),
            "merged": sum(self.delta(m0, m1, "herd_merged_registers_total").values()),
        }
        log("partition: equal %s after the heal (first contact across the cut after %s)"
            % (secs(conv), secs(first_contact[0])))

    def phase_new_node(self) -> None:
        a = self.args
        old = [self.nodes[i] for i in (1, 2, 3)]
        m0 = self.metrics(old)
        regs = old[0].api.digest()[0]
        log("new node: starting an empty node on host 4 (the others hold %d registers)" % regs)
        n4 = Node(self, 4)
        self.nodes[4] = n4
        n4.start()
        ready = n4.wait_ready()
        seen_peer = [None]

        def watch_peer(t: float) -> None:
            if seen_peer[0] is None and n4.api.alive_peers():
                seen_peer[0] = t - n4.spawned_at

        conv, ds = self.wait_equal(old + [n4], n4.spawned_at, a.deadline, "new node", also=watch_peer)
        m1 = self.metrics(old + [n4])
        if conv is None:
            self.incomplete.append("new node: digest not equal %.0f s after its spawn" % a.deadline)
        ae = self.delta(m0, m1, "herd_anti_entropy_bytes_total")
        self.results["new_node"] = {
            "registers": regs, "ready_s": ready, "first_peer_s": seen_peer[0], "synced_s": conv,
            "ae_bytes": sum(ae.values()), "merged_4": m1[4].get("herd_merged_registers_total", 0),
            "rounds": self.delta(m0, m1, "herd_anti_entropy_rounds_total"),
        }
        log("new node: API up %.2f s, first live peer %s, digest equal %s after spawn"
            % (ready, secs(seen_peer[0]), secs(conv)))

    # -------------------------------------------------------------- report

    def report(self) -> str:
        a, r = self.args, self.results
        out: list[str] = []
        p = out.append
        p("- command: `%s`" % a.command)
        p("- date: %s; commit: %s" % (time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(self.wall_start)), a.commit))
        p("- machine: %d cores (%s), kernel %s; load average at start %s; data dirs on %s"
          % (os.cpu_count() or 0, cpu_model(), platform.release(), self.loadavg, fs_of(self.tmp)))
        p("- lab: 4 hosts in network namespaces on one bridge (tests/lab/lab.py; blackhole routes for "
          "partitions), addresses %s; `herd serve` on hosts 1-3 (host 4 joins at the end) with one "
          "cluster secret, mDNS on `%s` only and no static seeds, `--anti-entropy-interval %s`; mDNS "
          "discovery took %s (first spawn to every node listing the other two alive)"
          % (self.lab.subnet if self.lab else "?", LAB_IF, a.anti_entropy_interval, secs(r.get("discovery_s"))))
        if "load" in r:
            L = r["load"]
            p("- data: %s keys `/m/k0000001`.. with %d-byte JSON string values, loaded into node 1 by "
              "`/v1/batch` (%d ops each, %d connections) in %s; all three digests equal %s after the "
              "load (%s registers, the nodes' token registers included; %s pushed, %s of anti-entropy)"
              % ("{:,}".format(L["keys"]), VALUE_BYTES, LOAD_BATCH, LOAD_CONNS, secs(L["load_s"]),
                 secs(L["replicated_after_s"]), "{:,}".format(L["registers"]), mib(L["push_bytes"]),
                 mib(L["ae_bytes"])))
        p("- runtime: %.0f s (build excluded)" % (now() - self.started))
        p("")
        p("| measure | result | target | met |")
        p("|---|---|---|---|")
        missed = []
        lat = r.get("latency", {})
        labels = {"seq": "sequential writes",
                  "conc": "%s writes/s over %d connections" % ("{:,.0f}".format(a.conc_rate), a.concurrency)}
        for key in ("seq", "conc"):
            if key not in lat:
                continue
            x = lat[key]
            p99s = [pct(v, 99) for v in x["peer_ms"]]
            ok = max(p99s) < LATENCY_TARGET_MS and not any(x["lost"])
            if not ok:
                missed.append("replication p99 (%s)" % labels[key])
            p("| replication latency, %s (%s writes): PUT on node 1 → `put` event on node 2 / node 3 "
              "| p50 %s / %s, p99 %s / %s%s | p99 < %g ms | %s |"
              % (labels[key], "{:,}".format(x["n"]), ms(pct(x["peer_ms"][0], 50)), ms(pct(x["peer_ms"][1], 50)),
                 ms(p99s[0]), ms(p99s[1]),
                 "; **%d / %d events lost**" % tuple(x["lost"]) if any(x["lost"]) else "",
                 LATENCY_TARGET_MS, yes_no(ok)))
        if "repair" in r:
            R = r["repair"]
            runs = [x for x in R["runs"] if not x["push_interfered"]]
            if not runs:
                self.incomplete.append("anti-entropy repair: in every run a push reached node 3 after "
                                       "the heal, so no run measured anti-entropy alone")
            else:
                worst = max(runs, key=lambda x: x["total"] / x["register_bytes"])
                bad = [i + 1 for i, x in enumerate(R["runs"]) if not x["push_interfered"]
                       and (x["converged_s"] is None or x["total"] > self.repair_limit(x))]
                if bad:
                    missed.append("anti-entropy repair bytes (run %s)" % ", ".join(map(str, bad)))
                p("| anti-entropy repair, %s differing registers among %s keys (%d new, %d updated), worst "
                  "of %d runs: bytes over all nodes, heal → equal digests | %s = %.2fx the differing "
                  "registers (%s); %s beyond them | ≤ 3x + 64 KiB = %s | %s |"
                  % ("{:,}".format(R["new"] + R["updated"]), "{:,}".format(R["keys"]), R["new"],
                     R["updated"], len(runs), nbytes(worst["total"]), worst["total"] / worst["register_bytes"],
                     nbytes(worst["register_bytes"]), kib(worst["total"] - worst["register_bytes"]),
                     nbytes(self.repair_limit(worst)), yes_no(not bad)))
        if "new_node" in r:
            x = r["new_node"]
            ok = x["synced_s"] is not None and x["synced_s"] < NEW_NODE_TARGET_S
            if not ok:
                missed.append("new node sync time")
            p("| new empty node joins and syncs %s registers: spawn → digest equal to the others' | %s "
              "| < %g s | %s |"
              % ("{:,}".format(x["registers"]), secs(x["synced_s"]) if x["synced_s"] is not None
                 else "**not synced in %.0f s**" % a.deadline, NEW_NODE_TARGET_S, yes_no(ok)))
        if "partition" in r:
            x = r["partition"]
            p("| convergence after a %.0f s partition {1} \\| {2,3} with writes on both sides: heal → equal "
              "digests | %s (first contact across the cut after %s) | — | — |"
              % (x["secs"], secs(x["converged_s"]) if x["converged_s"] is not None
                 else "**not converged in %.0f s**" % a.deadline, secs(x["contact_s"])))
        p("")
        if lat:
            p("Replication latency: one process sends the PUTs to node 1 and reads node 2's and node 3's "
              "`/v1/watch%s` streams, timing both on one monotonic clock (its sockets are opened inside the "
              "hosts' namespaces with setns(2)). Every write is a new key with a %d-byte value. Sequential: "
              "one connection; the next write goes out once node 1 answered and both events arrived. "
              "Concurrent: write k is due at k/rate and goes out on any of the %d connections with no write "
              "in flight (\"late\" counts writes sent more than 1 ms after their due time). Client busy: the "
              "share of the run the measuring process was not waiting in select(): near 100%% means the "
              "client, not herd, set the pace."
              % (LAT_PREFIX, VALUE_BYTES, a.concurrency))
            p("")
            p("| run | writes/s | late | client busy | node 1 ack p50 / p99 | → node 2 p50 / p99 / max "
              "| → node 3 p50 / p99 / max | → both p99 | lost | mean commit, nodes 1 / 2 / 3 |")
            p("|---|--:|--:|--:|---|---|---|---|---|---|")
            for key in ("seq", "conc"):
                if key not in lat:
                    continue
                x = lat[key]
                p("| %s | %s | %d | %.0f%% | %s / %s | %s / %s / %s | %s / %s / %s | %s | %d / %d | %s |"
                  % (labels[key], "{:,.0f}".format(x["rate"]), x["late"], 100 * x["client_busy"],
                     ms(pct(x["ack_ms"], 50)), ms(pct(x["ack_ms"], 99)),
                     ms(pct(x["peer_ms"][0], 50)), ms(pct(x["peer_ms"][0], 99)),
                     ms(max(x["peer_ms"][0], default=float("nan"))),
                     ms(pct(x["peer_ms"][1], 50)), ms(pct(x["peer_ms"][1], 99)),
                     ms(max(x["peer_ms"][1], default=float("nan"))),
                     ms(pct(x["both_ms"], 99)), x["lost"][0], x["lost"][1],
                     " / ".join(ms(x["commit_ms"][i]) for i in sorted(x["commit_ms"]))))
            p("")
            p("A replicated write is synced twice before its event shows: in node 1's log before the push, "
              "in the peer's log before the merge is visible. The mean commit is each node's write-ahead "
              "log append and `fdatasync` per group commit over the run (`herd_commit_seconds_total` / "
              "`herd_commits_total`).")
            p("")
        if "repair" in r:
            R = r["repair"]
            p("Anti-entropy repair, each run: every node lists the other two alive; host 3 is cut off "
              "(`partition([3])`); once nodes 1 and 2 no longer list node 3 alive and their push tasks to "
              "it have ended (so no push waits in a TCP queue for the heal), node 1 takes %d new keys and %d "
              "updates of existing keys in one `/v1/batch`; node 2 gets them by push, node 3 does not (push "
              "retries nothing); heal. Counted: `herd_anti_entropy_bytes_total` (bodies of the requests and "
              "replies of the rounds a node starts, and its repair pushes) summed over the three nodes from "
              "just before the heal until all digests are equal (heal → equal is timed from the start of "
              "`lab.heal()`, which took %s, since traffic resumes part-way through it); \"settled\" "
              "adds what rounds still under way at that moment sent in the next %.1f s. Differing "
              "registers: key (path without its "
              "leading `/`) + %d-byte value + %d-byte register head each."
              % (R["new"], R["updated"],
                 "%.0f-%.0f ms" % (1000 * min(x["heal_s"] for x in R["runs"]),
                                   1000 * max(x["heal_s"] for x in R["runs"])),
                 self.ae_interval_s * 1.2 + 0.3, VALUE_BYTES, REGISTER_HEAD))
            p("")
            p("| run | node 3 counted out after | cut off for | heal → equal | differing registers | total "
              "| ratio | beyond the differing registers | beyond the registers that cross | settled "
              "| by node: bytes (rounds started in the window) | pushes in the window |")
            p("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|")
            for i, x in enumerate(R["runs"]):
                p("| %d%s | %s | %s | %s | %s | %s | %.2fx | %s | %s | %s | %s | %s |"
                  % (i + 1, " (not counted: push)" if x["push_interfered"] else "",
                     secs(x["detect_s"]), secs(x["partition_s"]), secs(x["converged_s"]),
                     nbytes(x["register_bytes"]), nbytes(x["total"]), x["total"] / x["register_bytes"],
                     kib(x["total"] - x["register_bytes"]), kib(x["total"] - x["crossing_bytes"]),
                     nbytes(x["settled"]),
                     ", ".join("%d: %s (%d)" % (j, nbytes(x["per_node"][j]), x["rounds"][j])
                               for j in sorted(x["per_node"])),
                     nbytes(x["push_bytes"])))
            p("")
            p("\"Beyond the differing registers\" is the total minus the differing registers' bytes (the "
              "digest overhead as the target counts it); \"beyond the registers that cross\" also "
              "subtracts the old versions of the updated keys, which cross once more (%s per run), "
              "leaving the digest messages and the framing of the registers."
              % nbytes(R["runs"][0]["crossing_bytes"] - R["runs"][0]["register_bytes"]))
            p("")
            p("An updated key crosses twice by design (each side lacks the other's version, "
              "store/digest.rs), so for this mix 1.5x the differing registers is the floor before digest "
              "traffic. A round that node 1 or 2 had started with node 3 just before the cut waits on its "
              "TCP connection (up to the 10 s digest timeout) and carries on at the heal: it shows as bytes "
              "with 0 rounds started in the window (its first request, about 12 bytes, was counted before). "
              "The writes are made %.1f s after node 3 is counted out, once the push tasks to it have "
              "noticed; a run in which a push still reached node 3 after the heal would be marked \"not "
              "counted\". Writes acknowledged to node 3 by push from nodes 1 and 2 during the runs: %d."
              % (PUSH_TASK_WAKE, sum(x["pushed_to_3"] for x in R["runs"])))
            p("")
        if "partition" in r:
            x = r["partition"]
            p("Partition: `partition([1], [2, 3])` for %.1f s while node 1 and node 2 each took %g PUT/s "
              "(one connection each) of %d-byte values on keys drawn from `/m/k1..%d` (%s and %s writes; "
              "the sides overwrite some of the same keys, so last-writer-wins decides those); writes "
              "stopped, then healed (`lab.heal()` took %.0f ms; times are from its start). All digests equal "
              "%s after the heal. The first peer across the cut "
              "was listed alive again after %s: a peer that failed is retried with exponential backoff "
              "(1, 2, 4, 8, 16 s, ...), so the wait after a heal depends on where the heal falls in that "
              "schedule and grows with the partition's length. Anti-entropy moved %s and %s registers were "
              "merged."
              % (x["secs"], x["rate"], VALUE_BYTES, x["hot"], "{:,}".format(x["writes"][1]),
                 "{:,}".format(x["writes"][2]), 1000 * x["heal_s"], secs(x["converged_s"]),
                 secs(x["contact_s"]),
                 nbytes(x["ae_bytes"]), "{:,.0f}".format(x["merged"])))
            p("")
        if "new_node" in r:
            x = r["new_node"]
            p("New node: `herd serve` with an empty data dir on host 4 (same secret, mDNS only); its API "
              "answered %s after the spawn, it listed a live peer after %s, and its digest equalled the "
              "others' after %s. Anti-entropy moved %s in all (the registers alone: about %s); node 4 "
              "merged %s registers; rounds started meanwhile: %s."
              % (secs(x["ready_s"]), secs(x["first_peer_s"]), secs(x["synced_s"]), mib(x["ae_bytes"]),
                 mib(x["registers"] * (len(key_path(1)) - 1 + VALUE_BYTES + REGISTER_HEAD)),
                 "{:,.0f}".format(x["merged_4"]),
                 ", ".join("node %d %d" % (i, v) for i, v in sorted(x["rounds"].items()))))
            p("")
        if self.incomplete:
            p("**Incomplete:** " + "; ".join(self.incomplete) + ".")
            if missed:
                p("")
        if missed:
            p("Targets missed: " + "; ".join(missed) + ".")
        elif not self.incomplete:
            p("All measured targets met.")
        return "\n".join(out) + "\n"

    @staticmethod
    def repair_limit(x: dict) -> float:
        return REPAIR_FACTOR * x["register_bytes"] + REPAIR_SLACK


def parse_duration(text: str) -> float:
    """Seconds in a herd duration like 2s, 500ms, 1m."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * scale
    return float(text)


def mib(n: float) -> str:
    return "%.1f MiB" % (n / (1 << 20)) if n >= (1 << 20) else kib(n)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def fs_of(path: str) -> str:
    r = subprocess.run(["df", "-T", path], capture_output=True, text=True)
    lines = r.stdout.splitlines()
    if r.returncode == 0 and len(lines) >= 2:
        f = lines[1].split()
        return "%s (%s)" % (f[1], f[0])
    return "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--herd-bin", default=os.path.join(REPO, "target", "release", "herd"))
    p.add_argument("--keys", type=int, default=100_000, help="keys loaded (default 100000)")
    p.add_argument("--lat-writes", type=int, default=2000, help="writes per latency run (default 2000)")
    p.add_argument("--warmup-writes", type=int, default=100, help="unmeasured writes first (default 100)")
    p.add_argument("--concurrency", type=int, default=8, help="connections of the concurrent latency "
                   "run (default 8; 1 skips it)")
    p.add_argument("--conc-rate", type=float, default=1000.0,
                   help="writes/s of the concurrent latency run, over all its connections (default 1000)")
    p.add_argument("--partition-secs", type=float, default=30.0, help="length of the partition (default 30)")
    p.add_argument("--write-rate", type=float, default=50.0,
                   help="PUT/s on each side during the partition (default 50)")
    p.add_argument("--anti-entropy-interval", default="2s", help="passed to every node (default 2s)")
    p.add_argument("--repair-runs", type=int, default=3, help="runs of the repair test (default 3)")
    p.add_argument("--deadline", type=float, default=90.0,
                   help="seconds to wait for convergence before giving up (default 90)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20000 keys, 300 latency writes, one repair run, a 10 s partition")
    p.add_argument("--out", help="also write the report to FILE")
    p.add_argument("--tmp-dir", default=os.environ.get("TMPDIR", "/tmp"))
    p.add_argument("--keep-tmp", action="store_true", help="keep data dirs and node logs")
    p.add_argument("--command", default="python3 tests/bench/cluster_bench.py " + " ".join(sys.argv[1:]))
    p.add_argument("--commit", default=None)
    a = p.parse_args()
    given = set(arg.split("=")[0] for arg in sys.argv[1:])
    if a.quick:
        if "--keys" not in given:
            a.keys = 20_000
        if "--lat-writes" not in given:
            a.lat_writes = 300
        if "--partition-secs" not in given:
            a.partition_secs = 10.0
        if "--repair-runs" not in given:
            a.repair_runs = 1
    if not 200 <= a.keys <= 9_000_000:
        p.error("--keys must be within 200..9000000")
    if a.lat_writes < 10 or a.concurrency < 1 or a.write_rate <= 0 or a.partition_secs <= 0:
        p.error("--lat-writes >= 10, --concurrency >= 1, --write-rate > 0, --partition-secs > 0")
    try:
        parse_duration(a.anti_entropy_interval)
    except ValueError:
        p.error("--anti-entropy-interval: not a duration: %r" % a.anti_entropy_interval)
    if a.repair_runs < 1 or a.conc_rate <= 0:
        p.error("--repair-runs >= 1 and --conc-rate > 0")
    if a.out and not os.path.isdir(os.path.dirname(os.path.abspath(a.out))):
        p.error("--out: directory %s does not exist" % os.path.dirname(os.path.abspath(a.out)))
    if not os.access(a.herd_bin, os.X_OK):
        print("error: no herd binary at %s" % a.herd_bin, file=sys.stderr)
        return 1
    if a.commit is None:
        r = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"],
                           capture_output=True, text=True)
        a.commit = r.stdout.strip() or "unknown"
        if subprocess.run(["git", "-C", REPO, "status", "--porcelain"], capture_output=True,
                          text=True).stdout.strip():
            a.commit += ", working tree modified"
    try:
        check_environment()
    except LabError as e:
        print("error: the cluster benchmark needs the network lab: %s" % e, file=sys.stderr)
        return 1

    def on_term(signum, frame):
        raise SystemExit(143)

    # SIGTERM unwinds like Ctrl-C (the lab's own handler tears the lab down first, then calls this).
    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(a)
    bench.wall_start = time.time()
    bench.loadavg = " ".join("%.2f" % x for x in os.getloadavg())
    rc = 0
    try:
        bench.setup()
        bench.phase_latency()
        bench.phase_load()
        bench.phase_repair()
        bench.phase_partition()
        bench.phase_new_node()
    except (KeyboardInterrupt, SystemExit) as e:
        print("interrupted" if isinstance(e, KeyboardInterrupt) else "terminated", file=sys.stderr)
        if bench.lab is not None:
            bench.lab.close()
        cleanup_tmp(bench, a, keep=False)
        return 130 if isinstance(e, KeyboardInterrupt) else 143
    except (BenchError, LabError, OSError, http.client.HTTPException, ssl.SSLError) as e:
        print("error: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        for n in bench.nodes.values():
            print("--- last lines of node %d's log (%s) ---\n%s" % (n.i, n.logpath, n.log_tail()),
                  file=sys.stderr)
        rc = 1
    finally:
        for n in bench.nodes.values():
            if n.api is not None:
                n.api.close()
        if bench.lab is not None:
            bench.lab.close()
    if rc == 1 and not bench.results:
        cleanup_tmp(bench, a, keep=True)
        return 1
    if rc == 1:
        bench.incomplete.append("the run stopped early (see stderr)")
    report = bench.report()
    sys.stdout.write(report)
    sys.stdout.flush()
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)
        log("report written to %s" % a.out)
    cleanup_tmp(bench, a, keep=rc != 0)
    if rc:
        return rc
    return 3 if bench.incomplete else 0


def cleanup_tmp(bench: Bench, a, keep: bool) -> None:
    if not bench.tmp:
        return
    if a.keep_tmp or keep:
        log("kept %s (data dirs and node logs)" % bench.tmp)
    else:
        shutil.rmtree(bench.tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
