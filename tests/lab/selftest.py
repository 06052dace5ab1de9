#!/usr/bin/env python3
"""Self-test for tests/lab/lab.py: builds a 3-host lab and checks every fault it offers.

    python3 tests/lab/selftest.py

Prints one line per check and exits 0 only if all of them pass. Needs root
and iproute2, nothing else: reachability is tested with tiny Python TCP
listeners/clients and UDP multicast senders/receivers run inside the host
namespaces, so ping does not have to be installed. Takes about 10 seconds.
Exits 77 (skipped) when it cannot build labs (not root, no iproute2, no
netns), or 1 if HERD_TEST_STRICT=1 is set (CI).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import lab as labmod  # noqa: E402
from lab import Lab, LabError  # noqa: E402

PY = sys.executable
TCP_PORT = 7700
MCAST_GROUP = "239.255.77.77"
MCAST_PORT = 7777
CONNECT_TIMEOUT = 1.0  # seconds a client waits before calling a peer unreachable
FAST_FAIL = 0.5  # a blackholed connect must fail faster than this

# --------------------------------------------------------------------------- scripts run inside hosts

# TCP listener: answers every connection with its host name, so a client knows
# it reached the host it meant to.
LISTENER = r"""
import socket, sys
name = sys.argv[1].encode()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(name + b"\n")
    finally:
        c.close()
"""

# TCP client: connects to every target at once, prints {addr: [ok, detail, seconds]}.
CLIENT = r"""
import errno, json, socket, sys, threading, time
targets, port, timeout = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
out = {}
def probe(addr):
    t0 = time.monotonic()
    try:
        with socket.create_connection((addr, port), timeout=timeout) as s:
            s.settimeout(timeout)
            out[addr] = [True, s.recv(64).decode().strip(), time.monotonic() - t0]
    except OSError as e:
        why = errno.errorcode.get(e.errno, "") if e.errno else "timeout"
        out[addr] = [False, why or type(e).__name__, time.monotonic() - t0]
threads = [threading.Thread(target=probe, args=(a,)) for a in targets]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"""

# Multicast receiver: joins the group (the interface comes from the lab's
# 224.0.0.0/4 route) and prints "<payload> <source>" per datagram.
RECEIVER = r"""
import socket, struct, sys
group, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((group, port))
s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
             struct.pack("4s4s", socket.inet_aton(group), socket.inet_aton("0.0.0.0")))
print("ready", flush=True)
while True:
    data, src = s.recvfrom(2048)
    print(data.decode(errors="replace"), src[0], flush=True)
"""

# Multicast sender: a few copies of one tag, TTL 1, no loopback to itself.
SENDER = r"""
import socket, sys, time
group, port, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
for _ in range(3):
    s.sendto(tag.encode(), (group, port))
    time.sleep(0.05)
"""

# A process that holds a lab with a process in it and waits to be killed.
HOLDER = r"""
import signal, sys, time
# Behave like a test started from a terminal even if our parent runs with
# SIGINT ignored (as background jobs of a non-interactive shell do).
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, sys.argv[1])
from lab import Lab
lab = Lab(2)
sleeper = lab.popen(1, ["sleep", "60"])
print(lab.prefix, sleeper.pid, flush=True)
time.sleep(60)
"""


# --------------------------------------------------------------------------- helpers


class Lines:
    """Collects a process's stdout lines on a thread so reads can time out."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.lines: list[str] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self.lock:
                self.lines.append(line)
            self.queue.put(line)
        self.queue.put(None)

    def expect(self, want: str, timeout: float = 5.0) -> None:
        try:
            line = self.queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no %r from pid %d within %.0fs" % (want, self.proc.pid, timeout))
        if line != want:
            raise AssertionError("expected %r, got %r (exit %s)" % (want, line, self.proc.poll()))

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.lines)


def root_state() -> dict[str, list[str]]:
    """What the root namespace looks like: interfaces, IPv4 addresses and routes."""
    def out(*argv):
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    links = sorted(re.findall(r"^(\d+: [^:@]+)", out("ip", "-o", "link"), re.M))
    addrs = sorted(" ".join(l.split()[:4]) for l in out("ip", "-o", "-4", "addr").splitlines())
    routes = sorted(out("ip", "-4", "route", "show", "table", "all").splitlines())
    return {"links": links, "addrs": addrs, "routes": routes}


def reach(lab: Lab, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], list]:
    """Try a TCP connect for each (src, dst); return {(src, dst): [ok, detail, seconds]}."""
    by_src: dict[int, list[int]] = {}
    for s, d in pairs:
        by_src.setdefault(s, []).append(d)
    procs = {
        s: lab.popen(s, [PY, "-c", CLIENT, json.dumps([lab.addr(d) for d in ds]), str(TCP_PORT),
                         str(CONNECT_TIMEOUT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for s, ds in by_src.items()
    }
    result = {}
    for s, p in procs.items():
        out, err = p.communicate(timeout=15)
        if p.returncode != 0:
            raise AssertionError("client on host %d failed: %s" % (s, err.strip()))
        answers = json.loads(out)
        for d in by_src[s]:
            ok, detail, secs = answers[lab.addr(d)]
            if ok and detail != "h%d" % d:
                raise AssertionError("%d->%d answered by %r" % (s, d, detail))
            result[(s, d)] = [ok, detail, secs]
    return result


def all_pairs(hosts) -> list[tuple[int, int]]:
    return [(s, d) for s in hosts for d in hosts if s != d]


def expect_reach(lab: Lab, expected: dict[tuple[int, int], bool], fast_fail: bool = False) -> str:
    """Assert the reachability matrix; return a one-line summary."""
    got = reach(lab, list(expected))
    wrong = ["%d->%d %s" % (s, d, "connected" if got[(s, d)][0] else "failed (%s)" % got[(s, d)][1])
             for (s, d), want in expected.items() if got[(s, d)][0] != want]
    if wrong:
        raise AssertionError("unexpected: " + ", ".join(wrong))
    blocked = [(k, v) for k, v in got.items() if not v[0]]
    if fast_fail:
        slow = ["%d->%d %.2fs" % (s, d, v[2]) for (s, d), v in blocked if v[2] >= FAST_FAIL]
        if slow:
            raise AssertionError("blackholed connects were slow: " + ", ".join(slow))
    ok = ["%d->%d" % k for k, v in got.items() if v[0]]
    parts = []
    if ok:
        parts.append("connect " + " ".join(ok))
    if blocked:
        reasons = sorted({v[1] for _, v in blocked})
        worst = max(v[2] for _, v in blocked)
        parts.append("blocked %s (%s, <=%.2fs)" % (" ".join("%d->%d" % k for k, _ in blocked),
                                                    "/".join(reasons), worst))
    return "; ".join(parts)


class Multicast:
    """One long-lived receiver per host; send() reports which hosts got a tagged datagram."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.counter = 0
        self.receivers = {}
        for h in lab.hosts:
            p = lab.popen(h, [PY, "-c", RECEIVER, MCAST_GROUP, str(MCAST_PORT)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.receivers[h] = Lines(p)
        for r in self.receivers.values():
            r.expect("ready")

    def send(self, src: int, expected: set[int], settle: float = 0.5, patience: float = 3.0) -> str:
        self.counter += 1
        tag = "tag%d-from%d" % (self.counter, src)
        self.lab.run(src, [PY, "-c", SENDER, MCAST_GROUP, str(MCAST_PORT), tag], check=True, timeout=10)
        # The sender has finished, so every datagram is already on its way.
        # Wait up to `patience` for the expected hosts (a loaded machine may be
        # slow to schedule the receivers), and always at least `settle`, long
        # enough for a datagram leaking to an unexpected host to show up too.
        start = time.monotonic()
        while True:
            got = {h for h, r in self.receivers.items() if any(l.split()[0] == tag for l in r.snapshot())}
            elapsed = time.monotonic() - start
            if elapsed >= patience or (expected <= got and elapsed >= settle):
                break
            time.sleep(0.02)
        if got != expected:
            raise AssertionError("multicast from %d reached %s, expected %s"
                                 % (src, sorted(got) or "nobody", sorted(expected) or "nobody"))
        for h in got:  # the source address must be the sender's lab address
            srcs = {l.split()[1] for l in self.receivers[h].snapshot() if l.split()[0] == tag}
            if srcs != {self.lab.addr(src)}:
                raise AssertionError("host %d saw %s from %s" % (h, tag, srcs))
        return "from %d -> %s" % (src, ", ".join(map(str, sorted(got))) if got else "nobody")


# --------------------------------------------------------------------------- the checks


class _Abort(Exception):
    """The lab is unusable; skip to the teardown checks."""


class Runner:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.number = 0

    def check(self, title: str, fn) -> bool:
        """Run fn(); it returns a detail string or raises. Prints one line."""
        self.number += 1
        try:
            detail = fn()
        except Exception as exc:  # a failing check must not stop the others
            self.failed += 1
            print("FAIL %2d %s: %s: %s" % (self.number, title, type(exc).__name__, exc), flush=True)
            return False
        self.passed += 1
        print("ok   %2d %s%s" % (self.number, title, ": " + detail if detail else ""), flush=True)
        return True

    def act(self, title: str, fn) -> bool:
        """Apply a fault (or undo one). Silent when it works; a failure is a failed check."""
        try:
            fn()
        except Exception as exc:
            self.number += 1
            self.failed += 1
            print("FAIL %2d %s: %s: %s" % (self.number, title, type(exc).__name__, exc), flush=True)
            return False
        return True


def killed_holder_check(sig: int) -> str:
    """A process holding a lab dies of sig: its namespaces and processes must be gone."""
    holder = subprocess.Popen([PY, "-c", HOLDER, HERE], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    prefix = None
    try:
        line = holder.stdout.readline().split()
        if len(line) != 2:
            raise AssertionError("holder did not start: %s" % holder.stderr.read().strip())
        prefix, sleeper = line[0], int(line[1])
        if not labmod.list_lab_namespaces(prefix):
            raise AssertionError("holder's namespaces %s* not found" % prefix)
        holder.send_signal(sig)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        left = labmod.list_lab_namespaces(prefix) if prefix else []
        if left:
            # Report the failure, but do not leak the holder's lab ourselves.
            labmod.cleanup_stale(prefix)
    if left:
        raise AssertionError("left behind: %s (removed now)" % ", ".join(left))
    try:
        os.kill(sleeper, 0)
        raise AssertionError("process %d it started is still alive" % sleeper)
    except ProcessLookupError:
        pass
    return "exit %s, %s* removed, its process %d killed" % (holder.returncode, prefix, sleeper)


def main() -> int:
    try:
        labmod.check_environment()
    except LabError as exc:
        # 77 = skipped; HERD_TEST_STRICT=1 (CI) makes a missing capability a failure.
        strict = os.environ.get("HERD_TEST_STRICT") == "1"
        print("%s selftest: cannot run: %s" % ("FAIL" if strict else "SKIP", exc))
        return 1 if strict else 77

    t0 = time.monotonic()
    r = Runner()
    before = root_state()
    try:
        lab = Lab(3)
    except LabError as exc:
        print("FAIL  1 lab of 3 hosts built: %s" % exc)
        return 1
    everyone = {p: True for p in all_pairs(lab.hosts)}
    try:
        def setup():
            names = set(labmod.list_lab_namespaces(lab.prefix))
            want = {lab.hub} | {lab.ns(i) for i in lab.hosts}
            if names != want:
                raise AssertionError("namespaces %s, expected %s" % (sorted(names), sorted(want)))
            for i in lab.hosts:
                out = lab.run(i, ["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
                              capture_output=True, text=True, check=True).stdout
                if "inet %s/24" % lab.addr(i) not in out:
                    raise AssertionError("host %d eth0 lacks %s: %r" % (i, lab.addr(i), out))
            if root_state() != before:
                raise AssertionError("root namespace changed while the lab is up")
            return "%s{hub,h1,h2,h3}, hosts %s..%s on %s, root namespace untouched" % (
                lab.prefix, lab.addr(1), lab.addr(3).rsplit(".", 1)[1], lab.subnet)
        r.check("lab of 3 hosts built", setup)

        def start_peers():
            for i in lab.hosts:
                p = lab.popen(i, [PY, "-c", LISTENER, "h%d" % i, str(TCP_PORT)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                Lines(p).expect("ready")
            return Multicast(lab)
        peers = []
        if not r.act("start TCP listeners and multicast receivers", lambda: peers.append(start_peers())):
            raise _Abort()
        mc = peers[0]

        r.check("TCP: every pair connects", lambda: expect_reach(lab, everyone))
        r.check("multicast %s:%d from 1 reaches 2 and 3" % (MCAST_GROUP, MCAST_PORT),
                lambda: mc.send(1, {2, 3}))

        r.act("partition([1], [2, 3])", lambda: lab.partition([1], [2, 3]))
        cut_1 = {(1, 2): False, (1, 3): False, (2, 1): False, (3, 1): False}
        r.check("partition([1],[2,3]): 1 and {2,3} cannot reach each other, failing fast",
                lambda: expect_reach(lab, cut_1, fast_fail=True))
        r.check("partition([1],[2,3]): 2 and 3 still reach each other",
                lambda: expect_reach(lab, {(2, 3): True, (3, 2): True}))
        r.check("partition([1],[2,3]): multicast stays inside a group",
                lambda: "; ".join([mc.send(1, set()), mc.send(2, {3}), mc.send(3, {2})]))

        r.act("heal()", lab.heal)
        r.check("heal(): every pair connects again", lambda: expect_reach(lab, everyone))
        r.check("heal(): multicast from 1 reaches 2 and 3 again", lambda: mc.send(1, {2, 3}))

        # Host 2 alone; the unnamed hosts {1, 3} form the other group.
        r.act("partition([2], blackhole=False)", lambda: lab.partition([2], blackhole=False))
        r.check("partition([2], blackhole=False): silent drop, 2 cut off, 1<->3 fine",
                lambda: expect_reach(lab, {(2, 1): False, (2, 3): False, (1, 2): False, (3, 2): False,
                                           (1, 3): True, (3, 1): True}))
        r.check("partition([2], blackhole=False): multicast stays inside a group",
                lambda: "; ".join([mc.send(1, {3}), mc.send(2, set())]))
        r.act("heal()", lab.heal)

        r.act("link_down(2)", lambda: lab.link_down(2))
        r.check("link_down(2): 2 cut off both ways, 1<->3 fine",
                lambda: expect_reach(lab, {(2, 1): False, (2, 3): False, (1, 2): False, (3, 2): False,
                                           (1, 3): True, (3, 1): True}))
        r.check("link_down(2): multicast from 1 reaches only 3", lambda: mc.send(1, {3}))
        r.act("link_up(2)", lambda: lab.link_up(2))
        r.check("link_up(2): every pair connects again", lambda: expect_reach(lab, everyone))
        r.check("link_up(2): multicast from 1 reaches 2 and 3 again", lambda: mc.send(1, {2, 3}))
    except _Abort:
        pass  # reported already; still check that close() leaves nothing behind
    finally:
        started = list(lab._procs)
        lab.close()

    def closed():
        left = labmod.list_lab_namespaces(lab.prefix)
        if left:
            raise AssertionError("namespaces left: %s" % ", ".join(left))
        running = [p.pid for p in started if p.returncode is None]
        if running:
            raise AssertionError("processes not reaped: %s" % running)
        after = root_state()
        if after != before:
            diff = {k: sorted(set(after[k]) ^ set(before[k])) for k in after if after[k] != before[k]}
            raise AssertionError("root namespace changed: %s" % diff)
        lab.close()  # idempotent
        return "%d processes reaped, no %s* namespace, root links/addresses/routes as before" % (
            len(started), lab.prefix)
    r.check("close(): nothing left behind", closed)

    r.check("SIGTERM to a process holding a lab cleans up", lambda: killed_holder_check(signal.SIGTERM))
    r.check("SIGINT to a process holding a lab cleans up", lambda: killed_holder_check(signal.SIGINT))

    total = r.passed + r.failed
    print("%s: %d/%d checks passed in %.1fs" % ("PASS" if not r.failed else "FAIL", r.passed, total,
                                                time.monotonic() - t0))
    return 0 if not r.failed else 1


if __name__ == "__main__":
    sys.exit(main())
