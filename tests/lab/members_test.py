#!/usr/bin/env python3
"""Membership and tombstones: real `herd serve` processes in a 4-host network lab.

    cargo build --release -p node --bin herd
    python3 tests/lab/members_test.py [HERD]

Deletions are forgotten only once every member of the cluster is known to hold them (see
node/src/cluster/membership.rs). The periods are shortened to seconds: `--tombstone-grace 1s`
(the least time a deletion is kept) and `--member-expiry 15s`; anti-entropy runs every 500 ms.
Nodes find each other by mDNS only. Scenarios, one `ok`/`FAIL` line per check:

0. members: every node records the other three as members; 200 deletions with everyone in
   touch are collected on all four nodes (nothing waits).
1. a 2|2 partition held longer than the grace period and the member expiry: deletes and writes
   on both sides. Deletions wait (neither side has a majority, so nobody is removed); after the
   heal no deleted key comes back, every write made on either side is there, and every
   deletion is then collected on all nodes.
2. node 4 is cut off, takes a write and a delete no peer sees, and is powered off (SIGTERM) for
   longer than the member expiry. Nodes 1-3 (a majority) remove it; a key it held is deleted meanwhile and
   the deletion is collected without it. Restarted with the network back, node 4 is told it was
   removed, forgets what it held from others, keeps its own unreplicated write and delete, and
   rejoins: the key deleted by the others stays deleted everywhere, its write and its delete
   reach everyone, and it is a member again.
3. removal of a dead member: node 3 is killed (SIGKILL) for good; a deletion waits for it and
   `herd members` names it. `herd members remove` refuses a live member without --force and an
   unknown id; removing node 3 lets the deletion be collected on nodes 1, 2 and 4, which all
   show it removed.

Exit status: 0 all passed, 1 a check failed, 77 skipped (no lab) unless HERD_TEST_STRICT=1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from lab import Checks  # noqa: E402
import cluster_test as ct  # noqa: E402
from cluster_test import Cluster, clean_env, info, section, wait_until  # noqa: E402

EXPIRY_SECS = 15
EXTRA = ["--tombstone-grace", "1s", "--member-expiry", "%ds" % EXPIRY_SECS]
COLLECT_TIMEOUT = 30.0


def tombstones(c: Cluster, i: int) -> dict:
    return c.api(i).members().get("tombstones", {})


def waiting(c: Cluster, i: int) -> int:
    return tombstones(c, i).get("waiting", -1)


def member_entry(c: Cluster, i: int, j: int) -> dict:
    for m in c.api(i).members()["members"]:
        if m["node_id"] == c[j].node_id:
            return m
    return {}


def wait_collected(checks: Checks, c: Cluster, hosts, what: str) -> None:
    ok, secs = wait_until(lambda: all(waiting(c, i) == 0 for i in hosts), COLLECT_TIMEOUT, 0.2)
    info("deletions collected on %s after %.1f s" % (hosts, secs))
    checks.check(bool(ok), "%s: every deletion is collected on nodes %s" % (what, hosts),
                 "; ".join("node %d %s" % (i, tombstones(c, i)) for i in hosts))


def herd_cli(c: Cluster, i: int, *args: str) -> subprocess.CompletedProcess:
    node = c[i]
    return c.lab.run(i, [node.herd, "--data-dir", node.data_dir, *args],
                     capture_output=True, text=True, env=clean_env())


def scenario_members(checks: Checks, c: Cluster) -> None:
    section("0. every node records the others; deletions with everyone in touch are collected")
    hosts = list(c.lab.hosts)
    for i in hosts:
        ok, _ = wait_until(lambda: all(member_entry(c, i, j).get("member_since_ms") for j in hosts if j != i),
                           10, 0.1)
        checks.check(bool(ok), "node %d records the other three as members" % i,
                     "%s" % [member_entry(c, i, j) for j in hosts if j != i])
    for n in range(200):
        c.api(1 + n % 4).put("/m0/k%d" % n, n)
    for n in range(200):
        c.api(1 + (n + 1) % 4).delete("/m0/k%d" % n)
    wait_collected(checks, c, hosts, "200 deletions, everyone in touch")
    ok, _ = c.wait_converged(hosts, 20)
    checks.check(ok, "the four nodes converge", "digests %s" % c.digests(hosts))


def scenario_split(checks: Checks, c: Cluster) -> None:
    section("1. partition {1,2} | {3,4} for longer than the grace period and the member expiry")
    hosts = list(c.lab.hosts)
    before = {"k%d" % n: "before-%d" % n for n in range(6)}
    for k, v in before.items():
        c.api(1).put("/m1/" + k, v)
    ok, _ = c.wait_converged(hosts, 20)
    checks.check(ok, "before the split: the four nodes converged")
    c.lab.partition([1, 2], [3, 4])
    t0 = time.monotonic()
    c.api(1).delete("/m1/k0")
    c.api(2).delete("/m1/k1")
    c.api(1).put("/m1/a", "side A")
    c.api(3).put("/m1/k2", "side B")
    c.api(4).put("/m1/b", "side B")
    c.api(4).delete("/m1/k3")
    hold = EXPIRY_SECS + 4
    time.sleep(max(0.0, 5 - (time.monotonic() - t0)))
    checks.check(waiting(c, 1) >= 2 and waiting(c, 4) >= 1,
                 "5 s into the split the deletions wait on both sides (node 1: %d, node 4: %d)"
                 % (waiting(c, 1), waiting(c, 4)),
                 "node 1 %s, node 4 %s" % (tombstones(c, 1), tombstones(c, 4)))
    time.sleep(max(0.0, hold - (time.monotonic() - t0)))
    removed = [(i, j) for i in hosts for j in hosts if i != j and member_entry(c, i, j).get("state") == "removed"]
    checks.check(not removed, "after %.0f s of split (member expiry %d s) nobody removed anybody: neither side "
                 "has a majority" % (time.monotonic() - t0, EXPIRY_SECS), "removed: %s" % removed)
    c.lab.heal()
    ok, secs = c.wait_converged(hosts, ct.CONVERGE_TIMEOUT)
    info("converged %.1f s after the heal" % secs)
    checks.check(ok, "after the heal the four nodes converge", "digests %s" % c.digests(hosts))
    want = {"k2": "side B", "k4": "before-4", "k5": "before-5", "a": "side A", "b": "side B"}
    for i in hosts:
        doc = c.api(i).get("/m1")[0]
        checks.check(doc == want, "node %d: deleted keys stay deleted, every write of both sides is there" % i,
                     "/m1 is %r, want %r" % (doc, want))
    wait_collected(checks, c, hosts, "after the heal")


def scenario_powered_off(checks: Checks, c: Cluster) -> None:
    section("2. node 4 powered off past the member expiry, with a write no peer saw")
    hosts, rest = list(c.lab.hosts), [1, 2, 3]
    n4 = c[4]
    c.api(1).put("/m2/old", "held by node 4")
    c.api(1).put("/m2/del4", "deleted on node 4 alone")
    ok, _ = c.wait_converged(hosts, 20)
    checks.check(ok, "node 4 holds /m2/old and /m2/del4")
    c.lab.partition(rest, [4])
    v_own = c.api(4).put("/m2/own", "written on node 4 alone")
    c.api(4).delete("/m2/del4")
    code = n4.stop()
    checks.check(code == 0, "node 4 stops cleanly (exit 0)", "exit status %s" % code)
    t0 = time.monotonic()
    c.api(1).delete("/m2/old")
    ok, secs = wait_until(lambda: all(member_entry(c, i, 4).get("state") == "removed" for i in rest),
                          EXPIRY_SECS + 20, 0.2)
    info("node 4 removed on nodes 1-3 %.1f s after it stopped" % (time.monotonic() - t0))
    checks.check(bool(ok), "nodes 1-3 remove node 4 after the member expiry",
                 "; ".join("node %d: %s" % (i, member_entry(c, i, 4)) for i in rest))
    why = member_entry(c, 1, 4).get("removed", {}).get("why", "")
    checks.check("member_expiry" in why, "the removal says why: %r" % why)
    wait_collected(checks, c, rest, "without node 4")
    c.lab.heal()
    n4.start(EXTRA)
    n4.wait_ready()
    ok, secs = wait_until(lambda: all(member_entry(c, i, 4).get("state") == "alive" for i in rest), 30, 0.2)
    info("node 4 rejoined %.1f s after its start" % secs)
    checks.check(bool(ok), "node 4 rejoins: nodes 1-3 see it alive and a member again",
                 "; ".join("node %d: %s" % (i, member_entry(c, i, 4)) for i in rest))
    ok, secs = c.wait_converged(hosts, ct.CONVERGE_TIMEOUT)
    checks.check(ok, "the four nodes converge (%.1f s)" % secs, "digests %s" % c.digests(hosts))
    for i in hosts:
        old, _ = c.api(i).get("/m2/old")
        own, etag = c.api(i).get("/m2/own")
        del4, _ = c.api(i).get("/m2/del4")
        checks.check(old is None and own == "written on node 4 alone" and etag == v_own and del4 is None,
                     "node %d: /m2/old stays deleted; node 4's unreplicated write is there with its version, "
                     "and its unreplicated delete took effect" % i,
                     "/m2/old=%r /m2/own=%r @ %s /m2/del4=%r" % (old, own, etag, del4))
    with open(n4.log_path) as f:
        log = f.read()
    checks.check("removed from its cluster" in log, "node 4 logged that it was removed and forgot what it held")
    wait_collected(checks, c, hosts, "after node 4 rejoined")


def scenario_remove_dead(checks: Checks, c: Cluster) -> None:
    section("3. node 3 dies for good; `herd members remove` lets deletions go")
    rest = [1, 2, 4]
    c.api(1).put("/m3/x", 1)
    ok, _ = c.wait_converged(list(c.lab.hosts), 20)
    checks.check(ok, "node 3 holds /m3/x")
    c[3].kill()
    c.api(1).delete("/m3/x")
    # Named once it waited 10 anti-entropy intervals (5 s) past the grace period (1 s).
    time.sleep(7)
    t = tombstones(c, 1)
    checks.check(t.get("waiting", 0) >= 1 and c[3].node_id in t.get("waiting_for", []),
                 "7 s after node 3 died the deletion waits, for node 3", "%s" % t)
    table = herd_cli(c, 1, "members")
    checks.check(table.returncode == 0 and "deletion(s) kept" in table.stdout and c[3].node_id in table.stdout,
                 "`herd members` says which member deletions wait for", table.stdout + table.stderr)
    # Before the member expiry (15 s after its last contact) removes it anyway.
    gone = herd_cli(c, 1, "members", "remove", c[3].node_id[:6])
    checks.check(gone.returncode == 0, "`herd members remove %s` removes node 3" % c[3].node_id[:6],
                 gone.stdout + gone.stderr)
    live = herd_cli(c, 1, "members", "remove", c[2].node_id)
    checks.check(live.returncode != 0 and "alive" in live.stderr,
                 "`herd members remove` refuses a live member without --force (exit %d)" % live.returncode,
                 live.stdout + live.stderr)
    unknown = herd_cli(c, 1, "members", "remove", "abcdef")
    checks.check(unknown.returncode != 0 and "no member" in unknown.stderr,
                 "... and an unknown id (exit %d)" % unknown.returncode, unknown.stdout + unknown.stderr)
    wait_collected(checks, c, rest, "after the removal")
    for i in rest:
        ok, _ = wait_until(lambda: member_entry(c, i, 3).get("state") == "removed", 10, 0.2)
        checks.check(bool(ok), "node %d shows node 3 removed" % i, "%s" % member_entry(c, i, 3))
    again = herd_cli(c, 2, "members", "remove", c[3].node_id)
    checks.check(again.returncode != 0 and "already removed" in again.stderr,
                 "removing it again is refused", again.stdout + again.stderr)


def plan(checks: Checks, c: Cluster) -> list:
    hosts = list(c.lab.hosts)
    for n in c.nodes.values():
        n.env = ct.ENV
    c.start(hosts, EXTRA)
    ok, secs = wait_until(lambda: c.mesh_ok(hosts), ct.MESH_TIMEOUT, 0.1)
    checks.check(bool(ok), "the four nodes find each other by mDNS (%.1f s)" % secs)
    return [(name, (lambda fn=fn: fn(checks, c))) for name, fn in [
        ("0", scenario_members), ("1", scenario_split), ("2", scenario_powered_off),
        ("3", scenario_remove_dead)]]


def main() -> int:
    return ct.run("members_test", plan)


if __name__ == "__main__":
    sys.exit(main())
