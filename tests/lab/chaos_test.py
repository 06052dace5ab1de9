#!/usr/bin/env python3
"""A chaos soak with a history checker: 5 real `herd serve` nodes in a network lab.

    cargo build --release -p node --bin herd
    HERD_CHAOS_SECS=1800 python3 tests/lab/chaos_test.py [HERD]      # default 120 s

Five nodes (one cluster, mDNS only, anti-entropy every 500 ms, deletions kept at least 1 s,
data directories on 256 MiB tmpfs mounts). One client per node, as fast as its node answers,
writes, deletes, batches, compare-and-sets and reads 16 hot keys, and writes *cold* keys (each
written once, by one client, and perhaps deleted once later, so an undone deletion or a lost
write stays visible at the end), recording every operation: invocation, result (ok, a definite
refusal, or unknown when the connection failed or timed out), version and node. Meanwhile a
nemesis injects one fault at a time, chosen at random: symmetric partitions (blackhole routes
or silent), one-way partitions (nftables drops the connections one host opens to another),
flapping partitions, kill -9 and a restart, a restart with the clock 15 s ahead or behind
(libfaketime, within `max_clock_offset`), a full disk (the tmpfs filled, then freed), and a
plugin installed or updated (a json-schema validator that accepts every value the clients
write). Then the faults stop, every node runs with its real clock and full network, and the
checker verifies, for this store's model (available under partition, last writer wins by
version):

- every node converges to the same digest within 60 s (the time is printed);
- each key's final state is its highest-versioned acknowledged write or delete, or a newer
  operation whose outcome the client could not know;
- no read returns a value nobody wrote;
- no deleted key comes back (a key whose newest acknowledged operation is a delete is absent,
  unless an operation of unknown outcome may have written it later);
- one client's reads of a key on its node never go backwards in version, and never fall below
  the version of its own acknowledged writes there;
- a cold key acknowledged deleted is absent, and one acknowledged written and never deleted
  holds its value;
- once all have caught up, every deletion is collected on every node (bounded memory).

Checked to fail: with deletions collected without waiting for the members (a one-line change
to `Membership::held`), a 120 s run reported 1,644 violations (deleted cold keys back).

It prints the operations, the faults, the violations (which must be 0) and the convergence time.
Exit status: 0 all passed, 1 a check failed, 77 skipped (no lab) unless HERD_TEST_STRICT=1.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from lab import Checks  # noqa: E402
import cluster_test as ct  # noqa: E402
from cluster_test import ApiError, Cluster, clean_env, info, section, vkey, wait_until  # noqa: E402

SECS = float(os.environ.get("HERD_CHAOS_SECS", "120"))
SEED = int(os.environ.get("HERD_CHAOS_SEED", str(int(time.time()))))
HOSTS = 5
KEYS = ["/chaos/k%d" % i for i in range(16)]
# Cold keys: each is written once by one client and maybe deleted once later, so a deletion that
# is undone, or a write that is lost, stays visible in the final state.
COLD = "/chaos/c"
TMPFS = "256m"
CLOCK_JUMP = "15s"
PLUGIN = os.path.join(ct.REPO, "target", "plugins", "json-schema.wasm")
CONVERGE_BOUND = 60.0
OP_TIMEOUT = 3.0


class Op:
    """One client operation and what came of it."""

    __slots__ = ("client", "kind", "keys", "value", "t0", "t1", "status", "version", "read", "detail")

    def __init__(self, client: int, kind: str, keys: list[str], value):
        self.client, self.kind, self.keys, self.value = client, kind, keys, value
        self.t0 = time.monotonic()
        self.t1 = None
        self.status = "unknown"  # ok | fail | unknown
        self.version = None
        self.read = None  # (value, version) of a read
        self.detail = ""


class Client(threading.Thread):
    """Runs random operations against one node until stopped; records them all."""

    def __init__(self, c: Cluster, host: int, stop: threading.Event, rng: random.Random):
        super().__init__(daemon=True, name="client-%d" % host)
        self.c, self.host, self.stop_event, self.rng = c, host, stop, rng
        self.ops: list[Op] = []
        self.seq = 0
        self.cold: list[str] = []  # cold keys this client wrote and has not deleted

    def api(self) -> ct.Api:
        return self.c.api(self.host)

    def call(self, op: Op, method: str, path: str, body=None, headers=None):
        api = self.api()
        try:
            conn, _ = api._conn()
            conn.timeout = OP_TIMEOUT
            if conn.sock is not None:
                conn.sock.settimeout(OP_TIMEOUT)
            hdrs = {"Authorization": "Bearer %s" % api._token}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            hdrs.update(headers or {})
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            text = resp.read().decode()
            if resp.getheader("connection", "").lower() == "close":
                api._drop()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text
        except (OSError, http.client.HTTPException, ValueError) as e:
            api._drop()
            op.detail = "%s: %s" % (type(e).__name__, e)
            return None, {}, ""

    def finish(self, op: Op, status, text: str, ok=(200,)) -> None:
        op.t1 = time.monotonic()
        if status is None:
            op.status = "unknown"
        elif status in ok:
            op.status = "ok"
            if text and op.kind != "read":
                op.version = json.loads(text).get("version")
        elif 400 <= status < 600 and status not in (500, 502, 504) and "outcome_unknown" not in text:
            # The node answered with its JSON error: nothing was stored (but `outcome_unknown`:
            # the disk failed the write's own log write, so it may be there after a restart).
            op.status = "fail"
            op.detail = "%d %s" % (status, text[:120])
        else:
            op.status = "unknown"
            op.detail = "%d %s" % (status, text[:120])
        self.ops.append(op)

    def value(self) -> str:
        self.seq += 1
        return "n%d-%d" % (self.host, self.seq)

    def run(self) -> None:
        rng = self.rng
        while not self.stop_event.is_set():
            r = rng.random()
            key = rng.choice(KEYS)
            if r < 0.30:
                op = Op(self.host, "put", [key], self.value())
                st, _, text = self.call(op, "PUT", "/v1/kv" + key, op.value)
                self.finish(op, st, text)
            elif r < 0.42:
                op = Op(self.host, "delete", [key], None)
                st, _, text = self.call(op, "DELETE", "/v1/kv" + key)
                self.finish(op, st, text, ok=(200, 404))
                if op.status == "ok" and not op.version:
                    op.status = "fail"  # nothing was there: nothing deleted
            elif r < 0.52:
                k2 = rng.choice([k for k in KEYS if k != key])
                op = Op(self.host, "batch", [key, k2], self.value())
                body = {"ops": [{"op": "put", "path": key, "value": op.value},
                                {"op": "put", "path": k2, "value": op.value}]}
                st, _, text = self.call(op, "POST", "/v1/batch", body)
                self.finish(op, st, text)
            elif r < 0.70:
                if self.cold and rng.random() < 0.4:
                    cold = self.cold.pop(rng.randrange(len(self.cold)))
                    op = Op(self.host, "delete", [cold], None)
                    st, _, text = self.call(op, "DELETE", "/v1/kv" + cold)
                    self.finish(op, st, text, ok=(200, 404))
                else:
                    value = self.value()
                    cold = "%s/%s" % (COLD, value)
                    op = Op(self.host, "put", [cold], value)
                    st, _, text = self.call(op, "PUT", "/v1/kv" + cold, value)
                    self.finish(op, st, text)
                    if op.status == "ok":
                        self.cold.append(cold)
            elif r < 0.78:
                probe = Op(self.host, "read", [key], None)
                st, hdrs, text = self.call(probe, "GET", "/v1/kv" + key)
                self.record_read(probe, st, hdrs, text)
                if probe.status != "ok" or probe.read[1] is None:
                    continue
                op = Op(self.host, "cas", [key], self.value())
                st, _, text = self.call(op, "PUT", "/v1/kv" + key, op.value,
                                        {"If-Match": '"%s"' % probe.read[1]})
                self.finish(op, st, text)
            else:
                op = Op(self.host, "read", [key], None)
                st, hdrs, text = self.call(op, "GET", "/v1/kv" + key)
                self.record_read(op, st, hdrs, text)
            if op.status == "unknown":
                time.sleep(0.05)

    def record_read(self, op: Op, st, hdrs: dict, text: str) -> None:
        op.t1 = time.monotonic()
        if st == 200:
            op.status = "ok"
            op.read = (json.loads(text), ct.strip_etag(hdrs.get("etag", "")) or None)
        elif st == 404:
            op.status = "ok"
            op.read = (None, None)
        else:
            op.status = "unknown" if st is None else "fail"
            op.detail = op.detail or "%s %s" % (st, text[:120])
        self.ops.append(op)


class Nemesis(threading.Thread):
    """One fault at a time, chosen at random, until stopped; then everything healed."""

    def __init__(self, c: Cluster, stop: threading.Event, rng: random.Random, extra: list[str]):
        super().__init__(daemon=True, name="nemesis")
        self.c, self.stop_event, self.rng, self.extra = c, stop, rng, extra
        self.faults: dict[str, int] = {}
        self.log: list[str] = []
        self.errors: list[str] = []
        self.plugin_installed = False
        self.oneway: list[tuple[int, int]] = []
        self.filled: set[int] = set()

    def note(self, kind: str, what: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1
        self.log.append("%7.1f s  %s" % (time.monotonic() - self.t_start, what))

    def hold(self, lo: float, hi: float) -> None:
        self.stop_event.wait(self.rng.uniform(lo, hi))

    def run(self) -> None:
        self.t_start = time.monotonic()
        kinds = ["partition", "oneway", "flap", "kill", "clock", "disk", "plugin"]
        if not os.path.exists(PLUGIN):
            kinds.remove("plugin")
            info("no %s: no plugin faults (bash plugins/build.sh builds it)" % PLUGIN)
        while not self.stop_event.is_set():
            kind = self.rng.choice(kinds)
            try:
                getattr(self, "fault_" + kind)()
            except Exception as e:  # a fault that could not be injected is reported, not fatal
                self.errors.append("%s: %s: %s" % (kind, type(e).__name__, e))
                info("nemesis: %s failed: %s" % (kind, e))
            self.heal_all()
            self.hold(0.5, 2.0)

    def fault_partition(self) -> None:
        hosts = list(self.c.lab.hosts)
        self.rng.shuffle(hosts)
        cut = self.rng.randint(1, len(hosts) - 1)
        blackhole = self.rng.random() < 0.5
        self.c.lab.partition(hosts[:cut], hosts[cut:], blackhole=blackhole)
        self.note("partition", "partition %s | %s (%s)" % (sorted(hosts[:cut]), sorted(hosts[cut:]),
                                                           "blackhole" if blackhole else "silent"))
        self.hold(2, 8)

    def fault_oneway(self) -> None:
        src, dst = self.rng.sample(list(self.c.lab.hosts), 2)
        # In dst, drop every packet src sends in connections src opened: src cannot reach dst,
        # dst still reaches src.
        rules = ["add table inet chaos",
                 "add chain inet chaos input { type filter hook input priority 0 ; }",
                 "add rule inet chaos input ip saddr %s ct direction original drop" % self.c.lab.addr(src)]
        for r in rules:
            self.c.lab.run(dst, ["nft"] + r.split(), check=True, capture_output=True)
        self.oneway.append((src, dst))
        self.note("oneway", "one-way: %d cannot reach %d" % (src, dst))
        self.hold(2, 8)

    def fault_flap(self) -> None:
        i = self.rng.choice(list(self.c.lab.hosts))
        for _ in range(self.rng.randint(3, 6)):
            self.c.lab.partition([i])
            self.stop_event.wait(self.rng.uniform(0.2, 1.0))
            self.c.lab.heal()
            self.stop_event.wait(self.rng.uniform(0.2, 1.0))
        self.note("flap", "flapping partition of node %d" % i)

    def restart(self, i: int, env=None) -> None:
        n = self.c[i]
        if n.proc is not None and n.proc.poll() is None:
            n.kill()
        n.start(self.extra, env=env)
        n.wait_ready(healthy=False)

    def fault_kill(self) -> None:
        i = self.rng.choice(list(self.c.lab.hosts))
        self.c[i].kill()
        self.note("kill", "kill -9 node %d" % i)
        self.hold(0.5, 4)
        self.restart(i)

    def fault_clock(self) -> None:
        i = self.rng.choice(list(self.c.lab.hosts))
        sign = self.rng.choice("+-")
        self.restart(i, {"LD_PRELOAD": ct.LIBFAKETIME, "FAKETIME": sign + CLOCK_JUMP,
                         "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_DONT_RESET": "1"})
        self.note("clock", "node %d restarted with its clock %s%s" % (i, sign, CLOCK_JUMP))
        self.hold(3, 8)
        self.restart(i)

    def fault_disk(self) -> None:
        i = self.rng.choice(list(self.c.lab.hosts))
        self.filled.add(i)
        with open(os.path.join(self.c[i].data_dir, "filler"), "wb", buffering=0) as f:
            for chunk in (1 << 20, 4096):
                try:
                    while True:
                        f.write(b"\0" * chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
        self.note("disk", "node %d's disk full" % i)
        self.hold(2, 6)

    def fault_plugin(self) -> None:
        i = self.rng.choice(list(self.c.lab.hosts))
        n = self.c[i]
        if not self.plugin_installed:
            argv = ["plugin", "add", PLUGIN, "--name", "chaos-schema", "--prefix", "/chaos,/schemas",
                    "--hooks", "validate"]
        else:
            prefixes = self.rng.choice(["/chaos,/schemas", "/chaos/k0,/schemas", "/schemas"])
            argv = ["plugin", "update", "--name", "chaos-schema", "--prefix", prefixes]
        r = self.c.lab.run(i, [n.herd, "--data-dir", n.data_dir, *argv], capture_output=True, text=True,
                           env=clean_env())
        if r.returncode == 0 and not self.plugin_installed:
            self.plugin_installed = True
            # Every value the clients write is a string: the schema refuses none of them.
            self.c.api(i).put("/schemas/chaos", {"guards": "/chaos/k0", "schema": {"type": "string"}})
        self.note("plugin", "plugin %s on node %d: %s" % (argv[1], i, "ok" if r.returncode == 0
                                                         else "exit %d %s" % (r.returncode, r.stderr.strip()[:100])))
        self.hold(1, 3)

    def heal_all(self) -> None:
        lab = self.c.lab
        if lab.groups is not None:
            lab.heal()
        for src, dst in self.oneway:
            lab.run(dst, ["nft", "delete", "table", "inet", "chaos"], capture_output=True)
        self.oneway.clear()
        for i in sorted(self.filled):
            os.remove(os.path.join(self.c[i].data_dir, "filler"))
        self.filled.clear()
        for i in lab.hosts:
            p = self.c[i].proc
            if p is None or p.poll() is not None:
                self.restart(i)


def check_history(checks: Checks, c: Cluster, clients: list[Client]) -> int:
    """The checker: returns the number of violations (each printed)."""
    ops = [op for cl in clients for op in cl.ops]
    violations: list[str] = []
    written: dict[str, set] = {}
    for op in ops:
        if op.kind in ("put", "batch", "cas"):
            for k in op.keys:
                written.setdefault(k, set()).add(op.value)
    # Reads: only values somebody wrote; per client and key, versions never go backwards and
    # never below the client's own acknowledged writes.
    for cl in clients:
        floor: dict[str, tuple] = {}
        for op in cl.ops:
            if op.status != "ok":
                continue
            if op.kind == "read":
                value, version = op.read
                k = op.keys[0]
                if value is not None and value not in written.get(k, ()):
                    violations.append("node %d read %s = %r, which nobody wrote" % (cl.host, k, value))
                if version is not None:
                    if k in floor and vkey(version) < floor[k][0]:
                        violations.append("node %d read %s at %s after %s (%s): backwards" % (
                            cl.host, k, version, floor[k][1], floor[k][2]))
                    if k not in floor or vkey(version) > floor[k][0]:
                        floor[k] = (vkey(version), version, "an earlier read")
            elif op.version:
                for k in op.keys:
                    if k not in floor or vkey(op.version) > floor[k][0]:
                        floor[k] = (vkey(op.version), op.version, "its own %s" % op.kind)
    # Final state: the highest-versioned acknowledged write or delete, or something newer whose
    # outcome was unknown.
    api = c.api(1)
    for k in KEYS:
        acked = [op for op in ops if op.status == "ok" and op.version and k in op.keys and op.kind != "read"]
        unknown = [op for op in ops if op.status == "unknown" and k in op.keys and op.kind != "read"]
        top = max(acked, key=lambda o: vkey(o.version)) if acked else None
        value, etag = api.get(k)
        if value is None:
            if top is not None and top.kind != "delete" and not any(o.kind == "delete" for o in unknown):
                violations.append("%s is gone, but its newest acknowledged op is a %s of %r at %s" % (
                    k, top.kind, top.value, top.version))
            continue
        if top is not None and vkey(etag) < vkey(top.version):
            violations.append("%s holds %r at %s, older than the acknowledged %s at %s: a write was lost"
                              % (k, value, etag, top.kind, top.version))
        elif top is not None and etag == top.version:
            if top.kind == "delete":
                violations.append("%s holds %r at the version of its delete" % (k, value))
            elif value != top.value:
                violations.append("%s holds %r at %s, acknowledged as %r" % (k, value, etag, top.value))
        elif not any(o.value == value and o.kind != "delete" for o in unknown + acked):
            violations.append("%s holds %r at %s, newer than every acknowledged op (%s), and no write "
                              "of unknown outcome wrote it: a value nobody wrote, or a deleted key back"
                              % (k, value, etag, top and top.version))
    # Cold keys: written once, maybe deleted once.
    present = api.get(COLD)[0] or {}
    cold: dict[str, list[Op]] = {}
    for op in ops:
        if op.keys[0].startswith(COLD + "/"):
            cold.setdefault(op.keys[0], []).append(op)
    for k, kops in cold.items():
        name = k[len(COLD) + 1:]
        put = next((o for o in kops if o.kind == "put"), None)
        deletes = [o for o in kops if o.kind == "delete"]
        if any(o.status == "ok" for o in deletes):
            if name in present:
                violations.append("%s was deleted (acknowledged) but holds %r: it came back" % (k, present[name]))
        elif put is not None and put.status == "ok" and not deletes:
            if present.get(name) != put.value:
                violations.append("%s was written (acknowledged, %s) but holds %r: the write was lost"
                                  % (k, put.version, present.get(name)))
        elif name in present and (put is None or present[name] != put.value):
            violations.append("%s holds %r, which nobody wrote there" % (k, present[name]))
    info("cold keys: %d written, %d deleted, %d present at the end" % (
        sum(1 for ops_ in cold.values() if any(o.kind == "put" and o.status == "ok" for o in ops_)),
        sum(1 for ops_ in cold.values() if any(o.kind == "delete" and o.status == "ok" for o in ops_)),
        len(present)))
    for v in violations[:50]:
        print("VIOLATION  %s" % v, flush=True)
    checks.check(not violations, "the history checker finds no violation (%d)" % len(violations))
    return len(violations)


def plan(checks: Checks, c: Cluster, tmpfs: list[str]) -> list:
    extra = ["--tombstone-grace", "1s"]
    for i in c.lab.hosts:
        n = c[i]
        n.env = ct.ENV
        os.makedirs(n.data_dir, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + TMPFS, "tmpfs", n.data_dir], check=True)
        tmpfs.append(n.data_dir)
    c.start(c.lab.hosts, extra)
    ok, secs = wait_until(lambda: c.mesh_ok(list(c.lab.hosts)), ct.MESH_TIMEOUT, 0.1)
    checks.check(bool(ok), "the five nodes find each other by mDNS (%.1f s)" % secs)

    def soak():
        section("chaos for %.0f s (seed %d): 5 clients, one fault at a time" % (SECS, SEED))
        stop = threading.Event()
        rng = random.Random(SEED)
        clients = [Client(c, i, stop, random.Random(rng.random())) for i in c.lab.hosts]
        nemesis = Nemesis(c, stop, random.Random(rng.random()), extra)
        for t in clients + [nemesis]:
            t.start()
        stop.wait(SECS)
        stop.set()
        nemesis.join(60)
        nemesis.heal_all()
        t_healed = time.monotonic()
        for t in clients:
            t.join(OP_TIMEOUT + 5)
        for line in nemesis.log:
            print("fault %s" % line)
        ops = [op for cl in clients for op in cl.ops]
        by = {}
        for op in ops:
            by.setdefault((op.kind, op.status), 0)
            by[(op.kind, op.status)] += 1
        info("operations: %d (%s)" % (len(ops), ", ".join("%s %s %d" % (k, s, n) for (k, s), n in sorted(by.items()))))
        reasons = {}
        for op in ops:
            if op.status != "ok" and op.kind != "read" and op.detail:
                r = op.detail.split(":")[0][:60] if op.status == "unknown" else op.detail[:60]
                reasons[(op.status, r)] = reasons.get((op.status, r), 0) + 1
        for (status, r), n in sorted(reasons.items(), key=lambda kv: -kv[1])[:8]:
            info("  %s %dx: %s" % (status, n, r))
        info("faults: %d (%s)" % (sum(nemesis.faults.values()),
                                  ", ".join("%s %d" % kv for kv in sorted(nemesis.faults.items()))))
        checks.check(not nemesis.errors, "every fault was injected", "; ".join(nemesis.errors))
        hosts = list(c.lab.hosts)
        ok, _ = c.wait_converged(hosts, CONVERGE_BOUND)
        took = time.monotonic() - t_healed
        info("convergence after the last fault was healed (clients stopped meanwhile): %.2f s" % took)
        checks.check(ok, "every node converges to one digest within %.0f s of the last fault" % CONVERGE_BOUND,
                     "digests %s" % c.digests(hosts))
        n = check_history(checks, c, clients)
        t0 = time.monotonic()
        waiting = lambda: {i: c.api(i).members()["tombstones"]["waiting"] for i in hosts}  # noqa: E731
        ok, _ = wait_until(lambda: not any(waiting().values()), CONVERGE_BOUND, 0.5)
        collected = time.monotonic() - t0
        checks.check(bool(ok), "every deletion is collected on every node within %.0f s once all caught up "
                     "(%.1f s)" % (CONVERGE_BOUND, collected), "waiting: %s" % waiting())
        print("chaos: %d operations, %d faults, %d violations, converged in %.2f s, deletions collected "
              "%.1f s later" % (len(ops), sum(nemesis.faults.values()), n, took, collected), flush=True)

    return [("soak", soak)]


def main() -> int:
    tmpfs: list[str] = []

    def unmount():
        for d in tmpfs:
            subprocess.run(["umount", d], capture_output=True)

    return ct.run("chaos_test", lambda checks, c: plan(checks, c, tmpfs), hosts=HOSTS, after=unmount)


if __name__ == "__main__":
    sys.exit(main())
