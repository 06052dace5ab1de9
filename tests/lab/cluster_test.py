#!/usr/bin/env python3
"""End-to-end cluster tests: real `herd serve` processes in a 4-host network lab.

    cargo build -p node --bin herd
    python3 tests/lab/cluster_test.py [HERD]

HERD is the built binary (default: $HERD_BIN, else target/debug/herd). Every node runs inside a
lab namespace (tests/lab/lab.py) with mDNS limited to the lab's `eth0`, so no multicast leaves
the machine. Hosts 1-3 are one cluster ("lab", env "testing"); host 4 has the same secret and
cluster name but env "staging". All nodes use a 500 ms anti-entropy interval. The test talks to
each node's API on 127.0.0.1:7440 *inside* the node's namespace: a socket is opened after a
setns(2) of the calling thread into that namespace (ctypes; no helper processes), then TLS is
checked against the node's own tls/ca.crt as usual.

Scenarios, one `ok`/`FAIL` line per check, `info` lines with timings:

1. discovery and push: with mDNS only (no seeds) nodes 1-3 see each other alive at their lab
   addresses; a write on each of them shows up on the other two with the version its PUT
   answered, it was pushed (the writer's `pushed` counter for both peers rises), and the three
   digests and documents are equal.
2. another environment: nodes 1-3 list node 4 as `refused` (env staging) and node 4 lists them
   the same way; after 8 anti-entropy intervals node 4's document is exactly its own writes and
   nodes 1-3 hold none of them, even for a key both sides wrote.
3a. partition {1} | {2,3} with blackhole routes (unreachable at once), 3b. silent partition
   {1,3} | {2} (frames dropped; peers time out) held 12 s so peers go dead and back off: writes
   on both sides (A, then B, then A and B again on some keys; deletes too), every write and
   read answered during the split, each node sees its side's writes and not the other side's,
   the sides' digests differ, side A stops counting side B alive; after the heal all three
   converge to one digest and document, and for every key the winner is the acknowledged
   write with the highest version (value and ETag; deleted keys stay deleted), with winners
   from both sides.
4. kill -9 under load: writers on nodes 1, 2 and 3 (own keys and shared keys); node 3 gets
   SIGKILL mid-load and is restarted on the same data dir and peer port while cut off from the
   others: it kept its node id and still holds every write it acknowledged before the kill.
   Each node answered its writer strictly increasing versions (across the restart too). After
   the heal the digests are equal and every acknowledged write is on all three nodes with its
   value, or a newer version replaced it (one whose answer was lost in the kill).
5. push disabled: nodes 1-3 stop (SIGTERM, exit 0) and restart with `--no-push`; a write on
   node 1 still reaches 2 and 3 by anti-entropy alone, and node 1 pushed nothing.
2'. after all of the above the staging node still holds only its own writes, and 1-3 none.
6. the staging node is fixed: stopped and restarted as env testing on the same data dir (same
   node id). Every node must then list the other three alive, all four converge, /s2 merges
   (the newer /s2/shared wins) and a new write on node 1 reaches node 4.
7. the reverse: live member 3 restarts as env staging (same data dir and node id). Nodes 1, 2
   and 4 list it as refused, it counts nobody alive, and after 8 intervals no new write has
   crossed in either direction.
8. clocks: node 2 restarts with its clock 2 minutes ahead (libfaketime preloaded). Nodes 1 and
   4 refuse it with its offset (about +120 s) and it refuses them (about -120 s); ahead of both,
   it refuses to stamp writes (503 clock_ahead, health failing) and merges nothing of theirs.
   Restarted with its clock fixed, all three are alive again, converge, and it takes writes.

Exit status: 0 all passed, 1 a check failed, 77 skipped (not root, no iproute2, no netns) unless
HERD_TEST_STRICT=1, which turns a skip into a failure. The lab is always torn down. Node logs
are kept (and their path printed) when something fails. The last line is a one-line
PASS/FAIL/SKIP summary.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from lab import Checks, Lab, LabError, check_environment, connect_in_netns  # noqa: E402

SKIP = 77
CLUSTER = "lab"
ENV = "testing"
OTHER_ENV = "staging"
CLUSTER_HOSTS = [1, 2, 3]
STAGING_HOST = 4
API_PORT = 7440
PEER_PORT = 7441
AE = "500ms"
AE_SECS = 0.5
START_TIMEOUT = 30.0  # a node answers /v1/health within this after its start
MESH_TIMEOUT = 30.0  # discovery: every node sees the others alive
CONVERGE_TIMEOUT = 60.0  # after a heal or a restart: equal digests
VISIBLE_TIMEOUT = 10.0  # a single write reaches the other nodes
HTTP_TIMEOUT = 10.0


# --------------------------------------------------------------------------- checks


def info(msg: str) -> None:
    print("info  %s" % msg, flush=True)


def section(title: str) -> None:
    print("\n== %s" % title, flush=True)


def wait_until(pred, timeout: float, interval: float = 0.05):
    """Polls pred() until it returns a true value; returns (value, seconds waited).

    Exceptions from pred count as "not yet" (a node restarting, a connection refused); the last
    one is re-raised if the time runs out without success, so the failure says why.
    """
    t0 = time.monotonic()
    last_exc = None
    value = None
    while True:
        try:
            value = pred()
            last_exc = None
        except (OSError, http.client.HTTPException, ApiError, ValueError) as e:
            value, last_exc = None, e
        if value:
            return value, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            if last_exc is not None:
                raise last_exc
            return value, time.monotonic() - t0
        time.sleep(interval)


class ApiError(Exception):
    def __init__(self, status: int, body: str, what: str):
        super().__init__("%s answered %d: %s" % (what, status, body[:300]))
        self.status = status
        self.body = body


class Api:
    """HTTPS client of one node's API (127.0.0.1:7440 inside its namespace).

    One keep-alive connection per thread; a request that fails on a reused connection (the node
    restarted or closed it) is sent once more on a fresh one, unless retry=False.
    """

    def __init__(self, ns: str, data_dir: str, label: str):
        self.ns = ns
        self.data_dir = data_dir
        self.label = label
        self._local = threading.local()
        self._ctx = None
        self._token = None

    def reset(self) -> None:
        """Forget the credentials and connections (after a restart they are re-read)."""
        self._ctx = None
        self._token = None
        self._local = threading.local()

    def _conn(self) -> tuple[http.client.HTTPSConnection, bool]:
        if self._ctx is None:
            self._ctx = ssl.create_default_context(cafile=os.path.join(self.data_dir, "tls", "ca.crt"))
            with open(os.path.join(self.data_dir, "admin.token")) as f:
                self._token = f.read().strip()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        conn = http.client.HTTPSConnection("127.0.0.1", API_PORT, timeout=HTTP_TIMEOUT, context=self._ctx)
        ns = self.ns
        conn._create_connection = lambda addr, timeout=None, source_address=None: connect_in_netns(
            ns, addr, timeout, source_address)
        self._local.conn = conn
        return conn, False

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def request(self, method: str, path: str, body=None, retry: bool = True):
        """Returns (status, headers dict (lower-case names), body text)."""
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            conn, reused = self._conn()
            headers = {"Authorization": "Bearer %s" % self._token}
            if data is not None:
                headers["Content-Type"] = "application/json"
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                text = resp.read().decode()
                hdrs = {k.lower(): v for k, v in resp.getheaders()}
                if resp.getheader("connection", "").lower() == "close":
                    self._drop()
                return resp.status, hdrs, text
            except (OSError, http.client.HTTPException):
                self._drop()
                if attempt == 0 and reused and retry:
                    continue
                raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body=None, ok=(200,), retry: bool = True):
        status, hdrs, text = self.request(method, path, body, retry)
        if status not in ok:
            raise ApiError(status, text, "%s %s %s" % (self.label, method, path))
        return status, hdrs, (json.loads(text) if text else None)

    # --- the calls the scenarios use

    def put(self, path: str, value, retry: bool = True) -> str:
        _, _, ans = self.json("PUT", "/v1/kv" + path, value, retry=retry)
        return ans["version"]

    def delete(self, path: str) -> str:
        _, _, ans = self.json("DELETE", "/v1/kv" + path)
        return ans["version"]

    def get(self, path: str):
        """(value, etag version) or (None, None) when nothing is there."""
        status, hdrs, text = self.request("GET", "/v1/kv" + path)
        if status == 404:
            return None, None
        if status != 200:
            raise ApiError(status, text, "%s GET %s" % (self.label, path))
        return json.loads(text), strip_etag(hdrs.get("etag", ""))

    def doc(self):
        return self.json("GET", "/v1/kv/")[2]

    def status(self):
        return self.json("GET", "/v1/status")[2]

    def digest(self) -> tuple[int, str]:
        d = self.status()["digest"]
        return d["registers"], d["hash"]

    def members(self) -> dict:
        return self.json("GET", "/v1/members")[2]

    def health(self) -> bool:
        status, _, _ = self.request("GET", "/v1/health", retry=False)
        return status == 200

    def live(self) -> bool:
        status, _, _ = self.request("GET", "/v1/livez", retry=False)
        return status == 200


def strip_etag(etag: str) -> str:
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag.strip('"')


def vkey(version: str) -> tuple[int, int, int]:
    """A version string `millis-counter-nodeid` as its sort key."""
    millis, counter, node = version.split("-")
    return int(millis), int(counter), int(node, 16)


# --------------------------------------------------------------------------- nodes


def clean_env() -> dict[str, str]:
    """This process's environment without HERD_* settings (HERD_PEERS, HERD_NO_MDNS, ...): the
    nodes get exactly the flags the test gives them."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}


class Node:
    def __init__(self, lab: Lab, herd: str, work: str, secret: str, host: int, env: str):
        self.lab = lab
        self.herd = herd
        self.host = host
        self.env = env
        self.secret = secret
        self.data_dir = os.path.join(work, "n%d" % host)
        self.log_path = os.path.join(work, "n%d.log" % host)
        self.proc: subprocess.Popen | None = None
        self.node_id: str | None = None
        self.api = Api(lab.ns(host), self.data_dir, "node %d" % host)
        self.starts = 0

    def argv(self, extra=()) -> list[str]:
        return [
            self.herd, "--data-dir", self.data_dir, "serve",
            "--api-addr", "0.0.0.0:%d" % API_PORT,
            "--peer-addr", "0.0.0.0:%d" % PEER_PORT,
            "--cluster", CLUSTER, "--env", self.env,
            "--cluster-secret", self.secret,
            "--mdns-interface", "eth0",
            "--anti-entropy-interval", AE,
            *extra,
        ]

    def start(self, extra=(), env=None) -> None:
        assert self.proc is None or self.proc.poll() is not None, "node %d already runs" % self.host
        self.starts += 1
        log = open(self.log_path, "a")
        log.write("\n===== start %d: %s\n" % (self.starts, " ".join(self.argv(extra))))
        log.flush()
        self.api.reset()
        self.proc = self.lab.popen(self.host, self.argv(extra), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=dict(clean_env(), **(env or {})))
        log.close()

    def wait_ready(self, healthy: bool = True) -> float:
        """Waits until node.json names this process and the API answers (healthy, or only alive:
        a node may refuse writes from its first moments); returns seconds."""
        t0 = time.monotonic()
        node_json = os.path.join(self.data_dir, "node.json")
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("node %d exited with %s during start; see %s"
                                   % (self.host, self.proc.returncode, self.log_path))
            try:
                with open(node_json) as f:
                    meta = json.load(f)
                if meta.get("pid") == self.proc.pid and (self.api.health() if healthy else self.api.live()):
                    self.node_id = meta["node_id"]
                    return time.monotonic() - t0
            except (OSError, ValueError, http.client.HTTPException, ApiError):
                self.api.reset()
            if time.monotonic() - t0 > START_TIMEOUT:
                raise RuntimeError("node %d not ready after %.0f s; see %s" % (self.host, START_TIMEOUT, self.log_path))
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, no goodbye."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        """SIGTERM and wait for a graceful exit; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -999


class Cluster:
    def __init__(self, lab: Lab, herd: str, work: str, secret: str):
        self.lab = lab
        self.nodes = {
            i: Node(lab, herd, work, secret, i, OTHER_ENV if i == STAGING_HOST else ENV)
            for i in lab.hosts
        }

    def __getitem__(self, i: int) -> Node:
        return self.nodes[i]

    def api(self, i: int) -> Api:
        return self.nodes[i].api

    def start(self, hosts, extra=()) -> float:
        t0 = time.monotonic()
        for i in hosts:
            self.nodes[i].start(extra)
        for i in hosts:
            self.nodes[i].wait_ready()
        return time.monotonic() - t0

    def alive_view(self, i: int) -> tuple[set[str], dict]:
        m = self.api(i).members()
        by_id = {p["node_id"]: p for p in m["members"]}
        return {n for n, p in by_id.items() if p["state"] == "alive"}, by_id

    def mesh_ok(self, hosts) -> bool:
        """Every node of hosts sees exactly the other nodes of hosts alive (nobody else alive)."""
        for i in hosts:
            alive, _ = self.alive_view(i)
            if alive != {self.nodes[j].node_id for j in hosts if j != i}:
                return False
        return True

    def digests(self, hosts) -> dict[int, tuple[int, str]]:
        return {i: self.api(i).digest() for i in hosts}

    def converged(self, hosts) -> bool:
        d = self.digests(hosts)
        return len(set(d.values())) == 1

    def wait_converged(self, hosts, timeout: float = CONVERGE_TIMEOUT):
        ok, secs = wait_until(lambda: self.converged(hosts), timeout, 0.1)
        return bool(ok), secs


def wait_value(api: Api, path: str, value, version: str | None, timeout: float = VISIBLE_TIMEOUT):
    """Waits until path holds value (and, if given, ETag version); returns (ok, seconds, seen)."""
    seen = [None]

    def pred():
        v, etag = api.get(path)
        seen[0] = (v, etag)
        return v == value and (version is None or etag == version)

    ok, secs = wait_until(pred, timeout, 0.01)
    return bool(ok), secs, seen[0]


# --------------------------------------------------------------------------- scenarios


def scenario_discovery(checks: Checks, c: Cluster, t_start: float) -> None:
    section("1. mDNS discovery (no seeds) and push replication, hosts 1-3")
    ok, secs = wait_until(lambda: c.mesh_ok(CLUSTER_HOSTS), MESH_TIMEOUT, 0.1)
    info("full mesh %.2f s after the nodes answered (%.2f s after their start)"
         % (secs, time.monotonic() - t_start))
    for i in CLUSTER_HOSTS:
        m = c.api(i).members()
        by_id = {p["node_id"]: p for p in m["members"]}
        want = {c[j].node_id: j for j in CLUSTER_HOSTS if j != i}
        alive = {n for n, p in by_id.items() if p["state"] == "alive"}
        checks.check(
            alive == set(want) and not m["seeds"],
            "node %d sees nodes %s alive, with no seeds configured" % (i, sorted(want.values())),
            "members %s, seeds %s" % (
                {n: (p["state"], p["source"], p["addr"]) for n, p in by_id.items()}, m["seeds"]),
        )
        # mDNS may hand over an IPv6 link-local address (with its scope) before the IPv4 one;
        # both reach the peer's port on the lab network.
        bad = []
        for n, j in sorted(want.items(), key=lambda kv: kv[1]):
            addr = by_id.get(n, {}).get("addr", "")
            if addr != "%s:%d" % (c.lab.addr(j), PEER_PORT) and not (
                    addr.startswith("[fe80:") and addr.endswith("]:%d" % PEER_PORT)):
                bad.append("node %d at %r" % (j, addr))
        checks.check(not bad, "node %d knows its peers at lab addresses with the peer port (%s)"
                     % (i, ", ".join(by_id[n]["addr"] for n in want if n in by_id)), "; ".join(bad))
    if not ok:
        return

    for writer in CLUSTER_HOSTS:
        others = [j for j in CLUSTER_HOSTS if j != writer]
        before = {p["node_id"]: p["pushed"] for p in c.api(writer).members()["members"]}
        path = "/s1/from%d" % writer
        value = {"hello": "from node %d" % writer, "list": [writer, "x", None, True]}
        t0 = time.monotonic()
        version = c.api(writer).put(path, value)
        put_ms = (time.monotonic() - t0) * 1000
        lat = []
        for j in others:
            ok_j, secs_j, seen = wait_value(c.api(j), path, value, version)
            lat.append("node %d %.0f ms" % (j, secs_j * 1000))
            checks.check(ok_j,
                         "write on node %d (%s) visible on node %d with its version" % (writer, path, j),
                         "saw %r, want %r @ %s" % (seen, value, version))
        info("PUT on node %d answered in %.0f ms; visible on %s (after the answer)"
             % (writer, put_ms, ", ".join(lat)))

        def pushed_to_all():
            after = {p["node_id"]: p["pushed"] for p in c.api(writer).members()["members"]}
            return all(after.get(c[j].node_id, 0) > before.get(c[j].node_id, 0) for j in others) and after

        after, _ = wait_until(pushed_to_all, 3.0, 0.05)
        checks.check(bool(after), "node %d pushed the write to nodes %s" % (writer, others),
                     "pushed counters before %s after %s" % (before, after))
    ok, secs = c.wait_converged(CLUSTER_HOSTS, 10)
    checks.check(ok, "nodes 1-3 have equal digests", "digests %s" % c.digests(CLUSTER_HOSTS))
    d1 = c.api(1).doc()
    checks.check(all(c.api(j).doc() == d1 for j in CLUSTER_HOSTS),
                 "nodes 1-3 have the same document")


STAGING_KEYS = {"staging": {"from": "staging", "n": 4}, "shared": "the staging value"}
TESTING_KEYS = {"testing": {"from": "testing", "n": 1}, "shared": "the testing value"}


def scenario_environment(checks: Checks, c: Cluster) -> None:
    section("2. a node of env %s (same secret and cluster) on the same switch" % OTHER_ENV)
    # The staging node has been up since the start; it writes, and so does the cluster,
    # one key on both sides.
    for k, v in STAGING_KEYS.items():
        c.api(STAGING_HOST).put("/s2/" + k, v)
    for k, v in TESTING_KEYS.items():
        c.api(1).put("/s2/" + k, v)
    t0 = time.monotonic()

    def refused_everywhere():
        for i in CLUSTER_HOSTS:
            _, by_id = c.alive_view(i)
            p = by_id.get(c[STAGING_HOST].node_id)
            if not p or p["state"] != "refused":
                return False
        _, by_id = c.alive_view(STAGING_HOST)
        return all(by_id.get(c[i].node_id, {}).get("state") == "refused" for i in CLUSTER_HOSTS)

    wait_until(refused_everywhere, 10, 0.1)
    for i in CLUSTER_HOSTS:
        _, by_id = c.alive_view(i)
        p = by_id.get(c[STAGING_HOST].node_id)
        checks.check(
            p is not None and p["state"] == "refused" and p["env"] == OTHER_ENV and p["cluster"] == CLUSTER,
            "node %d lists the %s node as refused (env %s)" % (i, OTHER_ENV, OTHER_ENV),
            "entry %s" % p,
        )
    alive, by_id = c.alive_view(STAGING_HOST)
    checks.check(
        not alive and all(by_id.get(c[i].node_id, {}).get("state") == "refused" and
                          by_id[c[i].node_id]["env"] == ENV for i in CLUSTER_HOSTS),
        "the %s node lists nodes 1-3 as refused (env %s) and nobody alive" % (OTHER_ENV, ENV),
        "members %s" % {n: (p["state"], p["env"]) for n, p in by_id.items()},
    )

    # The cluster's own write travels meanwhile (anti-entropy and pushes keep working).
    for j in (2, 3):
        ok, _, seen = wait_value(c.api(j), "/s2/testing", TESTING_KEYS["testing"], None)
        checks.check(ok, "node 1's write /s2/testing reached node %d" % j, "saw %r" % (seen,))
    rest = 8 * AE_SECS - (time.monotonic() - t0)
    if rest > 0:
        time.sleep(rest)
    info("waited %.1f s (%d anti-entropy intervals) after the writes"
         % (time.monotonic() - t0, round((time.monotonic() - t0) / AE_SECS)))
    check_isolation(checks, c, "after 8 intervals")


def check_isolation(checks: Checks, c: Cluster, when: str) -> None:
    doc4 = c.api(STAGING_HOST).doc()
    checks.check(doc4 == {"s2": STAGING_KEYS},
                 "%s: the %s node holds exactly its own writes" % (when, OTHER_ENV),
                 "its document: %s" % json.dumps(doc4)[:400])
    for i in CLUSTER_HOSTS:
        s2, _ = c.api(i).get("/s2")
        checks.check(s2 == TESTING_KEYS,
                     "%s: node %d holds none of the %s node's writes (/s2 is the cluster's own)"
                     % (when, i, OTHER_ENV), "/s2 is %s" % json.dumps(s2))


def scenario_partition(checks: Checks, c: Cluster, title: str, side_a: list[int], side_b: list[int],
                       blackhole: bool, prefix: str, hold: float) -> None:
    """Splits CLUSTER_HOSTS into side_a | side_b, writes on both sides, heals, checks the winners.

    hold: seconds the split lasts at least (so failure detection has happened on both sides).
    """
    section(title)
    lab = c.lab
    a_first, a_last = c.api(side_a[0]), c.api(side_a[-1])
    b_first, b_last = c.api(side_b[0]), c.api(side_b[-1])
    ops: dict[str, list] = {}  # path -> [(version, value or None for a delete, "round:node N")]

    def put(api: Api, rnd: str, path: str, value):
        v = api.put(path, value)
        ops.setdefault(path, []).append((v, value, "%s:%s" % (rnd, api.label)))
        return v

    def delete(api: Api, rnd: str, path: str):
        v = api.delete(path)
        ops.setdefault(path, []).append((v, None, "%s:%s (delete)" % (rnd, api.label)))
        return v

    def val(rnd: str, api: Api, what: str):
        return [rnd, api.label, what]

    # Keys that exist on every node before the split.
    for k in ("del1", "del2", "del3", "keep"):
        put(b_first, "before", prefix + k, val("before", b_first, k))
    ok, _ = c.wait_converged(CLUSTER_HOSTS, 10)
    checks.check(ok, "before the split: nodes 1-3 converged")

    keys = [prefix + "k%d" % n for n in range(10)]
    lab.partition(side_a, side_b, blackhole=blackhole)
    t_split = time.monotonic()
    info("partitioned: %s (%s)" % (lab.groups, "blackhole routes: unreachable at once" if blackhole
                                    else "no blackhole routes: packets silently lost"))
    gap = 0.02  # between rounds, so later rounds also get later clock readings
    # Round A1: side A writes k0..k7.
    for p in keys[0:8]:
        put(a_first, "A1", p, val("A1", a_first, p))
    time.sleep(gap)
    # Round B1: side B writes k2..k9 (from both of its nodes if it has two) and deletes del1.
    for p in keys[2:6]:
        put(b_first, "B1", p, val("B1", b_first, p))
    for p in keys[6:10]:
        put(b_last, "B1", p, val("B1", b_last, p))
    delete(b_first, "B1", prefix + "del1")
    # Side A rewrites del3 and deletes del2.
    put(a_last, "A1", prefix + "del3", val("A1", a_last, "del3"))
    delete(a_last, "A1", prefix + "del2")
    time.sleep(gap)
    # Rounds A2 and B2: some keys change hands again.
    for p in (keys[4], keys[5], keys[8]):
        put(a_last, "A2", p, val("A2", a_last, p))
    time.sleep(gap)
    put(b_last, "B2", keys[5], val("B2", b_last, keys[5]))
    put(b_last, "B2", prefix + "del2", val("B2", b_last, "del2 again"))
    delete(b_first, "B2", prefix + "del3")
    checks.check(True, "every write and delete on both sides answered during the split (%d ops, %.2f s)"
                 % (sum(len(v) for v in ops.values()), time.monotonic() - t_split))

    def expected_on(side: str, path: str):
        """What a node of side (A or B) must show: the newest of the writes it could see."""
        mine = [o for o in ops[path] if o[2][0] == side or o[2].startswith("before")]
        return max(mine, key=lambda o: vkey(o[0]))[1] if mine else None

    def side_problems(i: int, side: str) -> list[str]:
        bad = []
        for p in sorted(ops):
            v, _ = c.api(i).get(p)
            want = expected_on(side, p)
            if v != want:
                bad.append("%s=%r want %r" % (p, v, want))
        return bad

    # Every node of each side reads its side's writes and none of the other side's.
    for side, hosts in (("A", side_a), ("B", side_b)):
        for i in hosts:
            res, secs = wait_until(lambda: not side_problems(i, side), 5, 0.05)
            checks.check(bool(res), "side %s: node %d reads side %s's writes and none of the other side's (%.2f s)"
                         % (side, i, side, secs), "; ".join(side_problems(i, side)))
    rest = hold - (time.monotonic() - t_split)
    if rest > 0:
        time.sleep(rest)
    d = c.digests(CLUSTER_HOSTS)
    checks.check(len({d[i] for i in side_a}) == 1 and len({d[i] for i in side_b}) == 1
                 and d[side_a[0]] != d[side_b[0]],
                 "%.1f s into the split: each side agrees within itself, the sides differ"
                 % (time.monotonic() - t_split), "digests %s" % d)
    # Still serving on both sides after a while (and after failure detection).
    late = prefix + "late"
    put(a_first, "A3", late, val("A3", a_first, "late"))
    put(b_last, "B3", late, val("B3", b_last, "late"))
    va, _ = a_first.get(late)
    vb, _ = b_last.get(late)
    checks.check(va == val("A3", a_first, "late") and vb == val("B3", b_last, "late"),
                 "both sides still read and write %.1f s into the split" % (time.monotonic() - t_split),
                 "side A %r, side B %r" % (va, vb))
    _, by = c.alive_view(side_a[0])
    states = {j: by.get(c[j].node_id, {}).get("state") for j in side_b}
    checks.check(all(st in ("suspect", "dead") for st in states.values()),
                 "node %d no longer counts side B alive before the heal (%s)" % (
                     side_a[0], ", ".join("node %d %s" % kv for kv in states.items())),
                 "states %s" % states)

    lab.heal()
    t_heal = time.monotonic()
    info("healed after %.1f s of split" % (t_heal - t_split))
    ok, secs = c.wait_converged(CLUSTER_HOSTS)
    info("digests equal %.2f s after the heal" % secs)
    checks.check(ok, "after the heal nodes 1-3 converge to one digest", "digests %s" % c.digests(CLUSTER_HOSTS))
    docs = {i: c.api(i).doc() for i in CLUSTER_HOSTS}
    top = prefix.strip("/").split("/")[0]
    checks.check(docs[1] == docs[2] == docs[3], "after the heal nodes 1-3 hold the same document",
                 "; ".join("node %d %s %s" % (i, top, json.dumps(docs[i].get(top))) for i in CLUSTER_HOSTS))
    winners = {}
    for i in CLUSTER_HOSTS:
        bad = []
        for p in sorted(ops):
            win = max(ops[p], key=lambda o: vkey(o[0]))
            winners[p] = win[2]
            v, etag = c.api(i).get(p)
            if win[1] is None:
                if v is not None:
                    bad.append("%s: deleted by %s @ %s but holds %r @ %s" % (p, win[2], win[0], v, etag))
            elif v != win[1] or etag != win[0]:
                bad.append("%s: holds %r @ %s, want %r @ %s (%s)" % (p, v, etag, win[1], win[0], win[2]))
        checks.check(not bad, "node %d: every key holds the acknowledged write with the highest version "
                     "(deleted keys stay deleted)" % i, "; ".join(bad))
    sides = {w[0] for w in winners.values()}
    info("winners: %s" % ", ".join("%s<-%s" % (p.rsplit("/", 1)[1], w) for p, w in sorted(winners.items())))
    checks.check({"A", "B"} <= sides, "winners come from both sides", "winners %s" % winners)
    ok, secs = wait_until(lambda: c.mesh_ok(CLUSTER_HOSTS), MESH_TIMEOUT, 0.1)
    info("all peers alive again %.2f s after the heal" % (time.monotonic() - t_heal))
    checks.check(bool(ok), "after the heal every node sees the other two alive")


class Writer(threading.Thread):
    """Writes to one node as fast as it answers, recording what was acknowledged."""

    def __init__(self, c: Cluster, host: int, stop: threading.Event):
        super().__init__(daemon=True, name="writer-%d" % host)
        self.api = c.api(host)
        self.host = host
        self.stop_event = stop
        self.acked: list[tuple[float, str, str, list]] = []  # (time, path, version, value)
        self.unacked: list[tuple[str, list]] = []  # sent, no answer: may or may not have landed
        self.errors = 0
        self.last_error = ""

    def run(self) -> None:
        n = 0
        while not self.stop_event.is_set():
            n += 1
            if n % 4 == 0:
                path = "/s4/shared/k%d" % (n % 8)
            else:
                path = "/s4/w%d/k%d" % (self.host, n % 40)
            value = ["w%d" % self.host, n]
            try:
                version = self.api.put(path, value, retry=False)
                self.acked.append((time.monotonic(), path, version, value))
            except (OSError, http.client.HTTPException, ApiError) as e:
                self.errors += 1
                self.last_error = "%s: %s" % (type(e).__name__, e)
                self.unacked.append((path, value))
                time.sleep(0.05)


def scenario_kill(checks: Checks, c: Cluster) -> None:
    section("4. kill -9 of node 3 under write load, restart on the same data dir and peer port")
    lab = c.lab
    stop = threading.Event()
    writers = {i: Writer(c, i, stop) for i in CLUSTER_HOSTS}
    t0 = time.monotonic()
    for w in writers.values():
        w.start()
    try:
        time.sleep(2.0)
        node3_id = c[3].node_id
        c[3].kill()
        t_kill = time.monotonic()
        acked3_before_kill = list(writers[3].acked)
        info("SIGKILL node 3 after %.1f s of load: acknowledged so far %s"
             % (t_kill - t0, ", ".join("node %d %d" % (i, len(w.acked)) for i, w in writers.items())))
        # Restart it cut off from the others: whatever it holds then came from its own disk.
        lab.partition([3])

        def down_on_1():
            _, by = c.alive_view(1)
            return by.get(node3_id, {}).get("state") in ("suspect", "dead") and by[node3_id]["state"]

        state, secs = wait_until(down_on_1, 10, 0.05)
        checks.check(bool(state), "node 1 notices node 3 is gone (%s after %.2f s)" % (state, secs))
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t_kill)))
        c[3].start()
        ready = c[3].wait_ready()
        t_up = time.monotonic()
        info("node 3 restarted (down %.2f s, API answering %.2f s after the start)" % (t_up - t_kill, ready))
        checks.check(c[3].node_id == node3_id, "node 3 kept its node id across the kill (%s)" % node3_id,
                     "now %s" % c[3].node_id)
        # Its own acknowledged writes survived the kill (guarantee 1).
        best: dict[str, tuple[str, list]] = {}
        for _, p, v, val in acked3_before_kill:
            if p not in best or vkey(v) > vkey(best[p][0]):
                best[p] = (v, val)
        lost = []
        for p, (v, val) in sorted(best.items()):
            got, etag = c.api(3).get(p)
            if etag is None or vkey(etag) < vkey(v) or (etag == v and got != val):
                lost.append("%s: %r @ %s, acknowledged %r @ %s" % (p, got, etag, val, v))
        checks.check(
            bool(best) and not lost,
            "node 3, restarted alone, still holds all %d writes it acknowledged before SIGKILL (%d keys)"
            % (len(acked3_before_kill), len(best)),
            "; ".join(lost[:10]) or "no write was acknowledged by node 3 before the kill",
        )
        time.sleep(0.5)  # node 3 takes writes while cut off, too
        lab.heal()
        t_heal = time.monotonic()
        time.sleep(2.0)
    finally:
        stop.set()
        for w in writers.values():
            w.join(timeout=HTTP_TIMEOUT + 5)
    t_stop = time.monotonic()
    for i, w in writers.items():
        info("writer on node %d: %d acknowledged, %d failed (%s)"
             % (i, len(w.acked), w.errors, w.last_error or "-"))
    total = sum(len(w.acked) for w in writers.values())
    rate = total / (t_stop - t0)
    checks.check(all(w.acked for w in writers.values()),
                 "every writer got acknowledgements (%d writes, %.0f/s overall)" % (total, rate))
    checks.check(any(t > t_up for t, *_ in writers[3].acked),
                 "node 3 acknowledged writes again after its restart")
    # One writer's writes are sequential, so the versions its node answered must grow: the
    # clock never goes backwards, across node 3's restart too.
    for i, w in writers.items():
        back = [(a[2], b[2]) for a, b in zip(w.acked, w.acked[1:]) if vkey(b[2]) <= vkey(a[2])]
        checks.check(not back, "node %d answered strictly increasing versions to its writer%s"
                     % (i, " (across the restart)" if i == 3 else ""),
                     "%d times a later write got a version not above the one before, e.g. %s"
                     % (len(back), back[:3]))

    ok, secs = c.wait_converged(CLUSTER_HOSTS)
    info("digests equal %.2f s after the writers stopped (%.2f s after the heal)"
         % (secs, time.monotonic() - t_heal))
    checks.check(ok, "nodes 1-3 converge after the kill, restart and heal", "digests %s" % c.digests(CLUSTER_HOSTS))

    # Every acknowledged write is on every node, or a newer write replaced it.
    best = {}
    for w in writers.values():
        for _, p, v, val in w.acked:
            if p not in best or vkey(v) > vkey(best[p][0]):
                best[p] = (v, val)
    attempted_unacked = {(p, json.dumps(val)) for w in writers.values() for p, val in w.unacked}
    for i in CLUSTER_HOSTS:
        lost, newer = [], []
        for p, (v, val) in sorted(best.items()):
            got, etag = c.api(i).get(p)
            if etag is None or vkey(etag) < vkey(v):
                lost.append("%s: %r @ %s, acknowledged %r @ %s" % (p, got, etag, val, v))
            elif etag == v and got != val:
                lost.append("%s: %r @ %s, acknowledged %r at that version" % (p, got, etag, val))
            elif etag != v:
                newer.append((p, got))
        unexplained = [x for x in newer if (x[0], json.dumps(x[1])) not in attempted_unacked]
        checks.check(not lost and not unexplained,
                     "node %d holds every acknowledged write (%d keys) or a newer one" % (i, len(best)),
                     "; ".join(lost[:10] + ["%s holds %r, newer than every acknowledged write and never sent"
                                            % x for x in unexplained[:5]]))
        if newer:
            info("node %d: %d key(s) hold a newer write whose answer was lost in the kill" % (i, len(newer)))
    d1 = c.api(1).doc()
    checks.check(all(c.api(j).doc() == d1 for j in CLUSTER_HOSTS), "nodes 1-3 have the same document")


def scenario_no_push(checks: Checks, c: Cluster) -> None:
    section("5. pushes disabled (--no-push): anti-entropy alone converges")
    codes = {i: c[i].stop() for i in CLUSTER_HOSTS}
    checks.check(all(code == 0 for code in codes.values()),
                 "nodes 1-3 stop cleanly on SIGTERM (exit 0)", "exit statuses %s" % codes)
    secs = c.start(CLUSTER_HOSTS, ["--no-push"])
    ok, mesh = wait_until(lambda: c.mesh_ok(CLUSTER_HOSTS), MESH_TIMEOUT, 0.1)
    info("restarted with --no-push in %.2f s; full mesh %.2f s later" % (secs, mesh))
    for i in CLUSTER_HOSTS:
        _, by = c.alive_view(i)
        info("node %d now reaches %s" % (i, ", ".join(
            "node %d at %s (%s)" % (j, by[c[j].node_id]["addr"], by[c[j].node_id]["source"])
            for j in CLUSTER_HOSTS if j != i and c[j].node_id in by)))
    checks.check(bool(ok), "after the restart every node sees the other two alive")
    path, value = "/s5/anti-entropy-only", {"pushed": False}
    version = c.api(1).put(path, value)
    for j in (2, 3):
        ok_j, secs_j, seen = wait_value(c.api(j), path, value, version, 10 * AE_SECS + 5)
        checks.check(ok_j, "write on node 1 reached node %d without a push (%.2f s; interval %s)"
                     % (j, secs_j, AE), "saw %r" % (seen,))
    pushed = {p["node_id"]: p["pushed"] for p in c.api(1).members()["members"] if p["state"] == "alive"}
    checks.check(pushed and all(n == 0 for n in pushed.values()), "node 1 pushed nothing",
                 "pushed counters %s" % pushed)
    ok, secs = c.wait_converged(CLUSTER_HOSTS)
    checks.check(ok, "nodes 1-3 converge to one digest", "%s" % c.digests(CLUSTER_HOSTS))


def scenario_still_apart(checks: Checks, c: Cluster) -> None:
    section("2'. after all that, the %s node is still apart" % OTHER_ENV)
    check_isolation(checks, c, "after scenarios 1-5")


def scenario_rejoin(checks: Checks, c: Cluster) -> None:
    section("6. the %s node is reconfigured: restarted as env %s (same data dir and node id)" % (OTHER_ENV, ENV))
    n4 = c[STAGING_HOST]
    node4_id = n4.node_id
    code = n4.stop()
    checks.check(code == 0, "the %s node stops cleanly on SIGTERM (exit 0)" % OTHER_ENV, "exit status %s" % code)
    n4.env = ENV
    n4.start()
    n4.wait_ready()
    checks.check(n4.node_id == node4_id, "node 4 kept its node id (%s)" % node4_id, "now %s" % n4.node_id)
    t0 = time.monotonic()
    hosts = CLUSTER_HOSTS + [STAGING_HOST]
    ok, secs = wait_until(lambda: c.mesh_ok(hosts), 15, 0.1)
    info("full mesh of 4 %s after %.2f s" % ("reached" if ok else "NOT reached", secs))
    for i in hosts:
        _, by = c.alive_view(i)
        entries = {j: by.get(c[j].node_id, {}) for j in hosts if j != i}
        checks.check(all(e.get("state") == "alive" for e in entries.values()),
                     "node %d sees the other three alive" % i,
                     "; ".join("node %d: %s, env %s, last error %r" % (j, e.get("state"), e.get("env"),
                                                                      e.get("last_error"))
                               for j, e in entries.items()))
    ok, secs = c.wait_converged(hosts, 15)
    info("digests of 1-4 equal after %.2f s" % (time.monotonic() - t0))
    checks.check(ok, "nodes 1-4 converge to one digest", "digests %s" % c.digests(hosts))
    # Both sides wrote /s2/shared; the cluster's write came later (higher version).
    want = dict(TESTING_KEYS, staging=STAGING_KEYS["staging"])
    for i in hosts:
        s2, _ = c.api(i).get("/s2")
        checks.check(s2 == want, "node %d: /s2 is both sides' keys, the newer /s2/shared winning" % i,
                     "/s2 is %s" % json.dumps(s2))
    for i in CLUSTER_HOSTS:
        _, by = c.alive_view(i)
        s2, _ = c.api(i).get("/s2")
        if by.get(node4_id, {}).get("state") == "refused" and isinstance(s2, dict) and "staging" in s2:
            info("node %d lists node 4 as refused, yet holds node 4's data" % i)
    version = c.api(1).put("/s6/after-rejoin", True)
    ok4, secs4, seen = wait_value(c.api(STAGING_HOST), "/s6/after-rejoin", True, version)
    checks.check(ok4, "a new write on node 1 reaches node 4 (%.0f ms)" % (secs4 * 1000), "saw %r" % (seen,))


def scenario_member_turns(checks: Checks, c: Cluster) -> None:
    section("7. a live member restarts as env %s (same data dir and node id): cut off at once" % OTHER_ENV)
    n3 = c[3]
    others = [1, 2, 4]
    code = n3.stop()
    checks.check(code == 0, "node 3 stops cleanly on SIGTERM (exit 0)", "exit status %s" % code)
    n3.env = OTHER_ENV
    n3.start()
    n3.wait_ready()
    t0 = time.monotonic()
    v_in = c.api(1).put("/s7/from-node-1", "after node 3 left")
    c.api(3).put("/s7/from-node-3", "written as staging")

    def refused_by_all():
        return all(c.alive_view(i)[1].get(n3.node_id, {}).get("state") == "refused" for i in others)

    ok, secs = wait_until(refused_by_all, 10, 0.1)
    for i in others:
        e = c.alive_view(i)[1].get(n3.node_id, {})
        checks.check(e.get("state") == "refused" and e.get("env") == OTHER_ENV,
                     "node %d lists node 3 as refused (env %s)" % (i, OTHER_ENV),
                     "entry: %s, env %s" % (e.get("state"), e.get("env")))
    alive, by = c.alive_view(3)
    checks.check(not alive, "node 3 counts nobody alive", "alive: %s" % sorted(alive))
    ok, _, seen = wait_value(c.api(2), "/s7/from-node-1", "after node 3 left", v_in)
    checks.check(ok, "the cluster still replicates without node 3", "node 2 saw %r" % (seen,))
    rest = 8 * AE_SECS - (time.monotonic() - t0)
    if rest > 0:
        time.sleep(rest)
    v3, _ = c.api(3).get("/s7/from-node-1")
    checks.check(v3 is None, "after 8 intervals: node 3 has none of the cluster's new writes",
                 "it holds /s7/from-node-1 = %r" % (v3,))
    for i in others:
        v, _ = c.api(i).get("/s7/from-node-3")
        checks.check(v is None, "after 8 intervals: node %d has none of node 3's new writes" % i,
                     "it holds /s7/from-node-3 = %r" % (v,))


LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def scenario_clock(checks: Checks, c: Cluster) -> None:
    section("8. node 2 restarted with its clock 2 minutes ahead (libfaketime), then fixed")
    if not os.path.exists(LIBFAKETIME):
        raise RuntimeError("%s is missing (Debian package faketime)" % LIBFAKETIME)
    n2 = c[2]
    others = [1, 4]
    n2.stop()
    n2.start(env={"LD_PRELOAD": LIBFAKETIME, "FAKETIME": "+2m"})
    n2.wait_ready(healthy=False)

    def entry(i: int, of: int) -> dict:
        return c.alive_view(i)[1].get(c[of].node_id, {})

    def refused_both_ways():
        return (all(entry(i, 2).get("clock_refused") for i in others)
                and all(entry(2, i).get("clock_refused") for i in others))

    ok, secs = wait_until(refused_both_ways, 15, 0.1)
    info("refused both ways after %.2f s" % secs)
    for i in others:
        e = entry(i, 2)
        off = e.get("clock_offset_ms")
        checks.check(e.get("clock_refused") is True and off is not None and 115000 <= off <= 125000,
                     "node %d refuses node 2's clock, measured about +120 s ahead" % i,
                     "entry: state %s, offset %s, refused %s" % (e.get("state"), off, e.get("clock_refused")))
        e = entry(2, i)
        off = e.get("clock_offset_ms")
        checks.check(e.get("clock_refused") is True and off is not None and -125000 <= off <= -115000,
                     "node 2 refuses node %d's clock, measured about -120 s" % i,
                     "entry: state %s, offset %s" % (e.get("state"), off))
    status, _, body = c.api(2).request("PUT", "/v1/kv/s8/from-node-2", 1)
    checks.check(status == 503 and "clock_ahead" in body,
                 "node 2, ahead of both peers, refuses to stamp a write (503 clock_ahead)",
                 "answered %s %r" % (status, body[:200]))
    checks.check(not c.api(2).health(), "node 2's /v1/health says it is failing", "it answered 200")
    t0 = time.monotonic()
    v1 = c.api(1).put("/s8/from-node-1", "while node 2 is ahead")
    ok, _, seen = wait_value(c.api(4), "/s8/from-node-1", "while node 2 is ahead", v1)
    checks.check(ok, "nodes 1 and 4 go on replicating", "node 4 saw %r" % (seen,))
    rest = 8 * AE_SECS - (time.monotonic() - t0)
    if rest > 0:
        time.sleep(rest)
    v, _ = c.api(2).get("/s8/from-node-1")
    checks.check(v is None, "after 8 intervals: node 2 merged nothing of the others'",
                 "it holds /s8/from-node-1 = %r" % (v,))

    section("8'. node 2's clock fixed (restarted without libfaketime)")
    n2.stop()
    n2.start()
    n2.wait_ready()
    hosts = [1, 2, 4]
    t0 = time.monotonic()
    ok, secs = wait_until(lambda: c.mesh_ok(hosts), 20, 0.1)
    checks.check(ok, "nodes 1, 2 and 4 see each other alive again (%.2f s)" % secs,
                 "; ".join("node %d: %s" % (i, c.alive_view(i)[0]) for i in hosts))
    ok, _ = c.wait_converged(hosts, 20)
    info("digests of 1, 2, 4 equal after %.2f s" % (time.monotonic() - t0))
    checks.check(ok, "nodes 1, 2 and 4 converge to one digest", "digests %s" % c.digests(hosts))
    v2 = c.api(2).put("/s8/from-node-2", "clock fixed")
    ok, _, seen = wait_value(c.api(1), "/s8/from-node-2", "clock fixed", v2)
    checks.check(ok, "node 2 takes writes again and they reach node 1", "node 1 saw %r" % (seen,))


# --------------------------------------------------------------------------- main


class Interrupted(BaseException):
    def __init__(self, signum: int):
        super().__init__("signal %d" % signum)
        self.signum = signum


def _interrupted(signum, frame):
    raise Interrupted(signum)



def run(name: str, plan, hosts: int = 4, after=None) -> int:
    """The frame of a lab test: the herd binary (argv[1], $HERD_BIN, or target/debug/herd), a
    lab of `hosts` hosts, a cluster secret in a work dir, the scenarios, and the summary line.
    plan(checks, c) starts the nodes and answers the scenarios, [(name, fn)], run in order; one
    that raises is reported and the next runs (after a heal). after() runs once the lab is
    closed (its processes gone), before the work dir is removed."""
    herd = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "HERD_BIN", os.path.join(REPO, "target", "debug", "herd"))
    strict = os.environ.get("HERD_TEST_STRICT") == "1"
    if not os.access(herd, os.X_OK):
        print("FAIL %s: no herd binary at %s (build it: cargo build -p node --bin herd)" % (name, herd))
        return 1
    try:
        check_environment()
    except LabError as e:
        print("%s %s: needs the network lab: %s" % ("FAIL" if strict else "SKIP", name, e))
        return 1 if strict else SKIP

    # SIGTERM and SIGHUP unwind like Ctrl-C, so the lab and the work dir go away either way
    # (lab.py's own handlers run first and hand the signal on to these).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _interrupted)
    t_begin = time.monotonic()
    checks = Checks()
    work = tempfile.mkdtemp(prefix="herd-%s-" % name.replace("_", "-"))
    secret = os.path.join(work, "cluster.secret")
    lab = None
    errors: list[str] = []
    interrupted = None
    try:
        # Writes a file only; no network.
        subprocess.run([herd, "--data-dir", work, "cluster", "init", "--out", secret],
                       check=True, capture_output=True, text=True, env=clean_env())
        lab = Lab(hosts)
        info("lab %s on %s; herd %s; work dir %s" % (lab.prefix, lab.subnet, herd, work))
        c = Cluster(lab, herd, work, secret)
        for scenario, fn in plan(checks, c):
            t0 = time.monotonic()
            try:
                fn()
            except (LabError, RuntimeError, OSError, http.client.HTTPException, ApiError,
                    KeyError, ValueError, TypeError, AssertionError, subprocess.SubprocessError) as e:
                err = "scenario %s aborted: %s: %s" % (scenario, type(e).__name__, e)
                errors.append(err)
                print("FAIL  %s" % err, flush=True)
                traceback.print_exc(limit=4, file=sys.stdout)
                if lab.groups is not None:
                    lab.heal()
            info("scenario %s took %.1f s" % (scenario, time.monotonic() - t0))
    except (LabError, RuntimeError, OSError, subprocess.SubprocessError) as e:
        err = "%s: %s" % (type(e).__name__, e)
        errors.append(err)
        print("FAIL  %s" % err, flush=True)
    except Interrupted as e:
        interrupted = e.signum
    except KeyboardInterrupt:
        interrupted = signal.SIGINT
    finally:
        if lab is not None:
            lab.close()
        if after is not None:
            after()

    if interrupted is not None:
        shutil.rmtree(work, ignore_errors=True)
        print("INTERRUPTED %s (%s): lab and work dir removed" % (name, signal.Signals(interrupted).name),
              flush=True)
        signal.signal(interrupted, signal.SIG_DFL)
        os.kill(os.getpid(), interrupted)  # die of the signal, so the caller sees why
        return 128 + interrupted

    took = time.monotonic() - t_begin
    if errors or checks.failed:
        print("info  node logs kept in %s" % work)
        print("FAIL %s: %d passed, %d failed in %.0f s%s" % (
            name, checks.passed, len(checks.failed) + len(errors), took,
            " (" + "; ".join(errors) + ")" if errors else ""))
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("PASS %s: %d passed, 0 failed in %.0f s" % (name, checks.passed, took))
    return 0


def plan(checks: Checks, c: Cluster) -> list:
    t_start = time.monotonic()
    secs = c.start(c.lab.hosts)
    info("4 nodes started and answering in %.2f s" % secs)

    def all_still_run():
        for i in c.lab.hosts:
            p = c[i].proc
            checks.check(p is not None and p.poll() is None, "node %d still runs at the end" % i,
                         "exit status %s; see %s" % (p and p.returncode, c[i].log_path))

    return [
        ("1", lambda: scenario_discovery(checks, c, t_start)),
        ("2", lambda: scenario_environment(checks, c)),
        ("3a", lambda: scenario_partition(
            checks, c, "3a. partition {1} | {2,3} (blackhole routes): writes on both sides, heal, convergence",
            [1], [2, 3], True, "/s3/", 3.0)),
        ("3b", lambda: scenario_partition(
            checks, c, "3b. silent partition {1,3} | {2} (frames dropped, no blackhole routes): the same",
            [1, 3], [2], False, "/s3b/", 12.0)),
        ("4", lambda: scenario_kill(checks, c)),
        ("5", lambda: scenario_no_push(checks, c)),
        ("2'", lambda: scenario_still_apart(checks, c)),
        ("6", lambda: scenario_rejoin(checks, c)),
        ("7", lambda: scenario_member_turns(checks, c)),
        ("8", lambda: scenario_clock(checks, c)),
        ("end", all_still_run),
    ]


def main() -> int:
    return run("cluster_test", plan)


if __name__ == "__main__":
    sys.exit(main())
