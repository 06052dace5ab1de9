#!/usr/bin/env python3
"""End-to-end test of herd's mDNS discovery (node/src/cluster/mdns.rs) in a 3-host lab.

    cargo build -p node --example mdns_probe
    python3 tests/lab/mdns_test.py [PROBE]

PROBE is the built probe (default: $HERD_MDNS_PROBE, else target/debug/examples/mdns_probe).
Every probe runs inside a lab namespace (tests/lab/lab.py), so no multicast leaves the
machine. Checks, one line each:

1. the probe refuses to run in the root network namespace (asked to use `lo` only, so even a
   failure of that check sends nothing off the machine);
2. whole lab: hosts 1 and 2 announce env "testing", host 3 env "staging", all in cluster
   "lab"; each probe finds exactly the other two, with their ids, cluster, env, protocol,
   API port and their lab address with their peer port, and never itself;
3. partition([3]): fresh probes on 1 and 2 find only each other, host 3 finds nobody;
4. restarts: a probe on host 1 keeps running while host 2's probe stops cleanly and starts
   again at once, then is killed with SIGKILL and starts again at once; host 1 reports each
   new start of host 2 (a new `boot` number).

Exit status: 0 all passed, 1 a check failed, 77 skipped (not root, no iproute2, no netns) unless
HERD_TEST_STRICT=1, which turns a skip into a failure. The lab is always torn down. The last
line is a one-line PASS/FAIL/SKIP summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from lab import Checks, Lab, LabError, check_environment  # noqa: E402

SKIP = 77
CLUSTER = "lab"
ENVS = {1: "testing", 2: "testing", 3: "staging"}
WHOLE_SECS = 6  # a probe in the whole lab runs this long (discovery takes 1-2 s)
PARTITION_SECS = 4
RESTART_SECS = 3  # each of host 2's two runs in the restart check
EXIT_GRACE = 10  # seconds a probe may take beyond --secs to exit


def node_id(i: int) -> str:
    return "%016x" % (0xFEED0000 + i)


def peer_port(i: int) -> int:
    return 7400 + i


def api_port(i: int) -> int:
    return 7300 + i


def start_probe(lab: Lab, probe: str, i: int, secs: int) -> subprocess.Popen:
    argv = [
        probe, "--id", node_id(i), "--cluster", CLUSTER, "--env", ENVS[i], "--iface", "eth0",
        "--peer-port", str(peer_port(i)), "--api-port", str(api_port(i)), "--secs", str(secs),
    ]
    return lab.popen(i, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, secs: int) -> tuple[int | None, list, list[str], str]:
    """Wait for a probe; return (exit code, parsed JSON lines, unparsable lines, stderr)."""
    try:
        out, err = proc.communicate(timeout=secs + EXIT_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, [], [], err + "\n(probe did not exit in time)"
    found, garbage = [], []
    for line in out.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            garbage.append(line)
    return proc.returncode, found, garbage, err


def run_probes(lab: Lab, probe: str, hosts: list[int], secs: int) -> dict[int, list]:
    procs = {i: start_probe(lab, probe, i, secs) for i in hosts}
    results = {}
    for i, proc in procs.items():
        code, found, garbage, err = finish(proc, secs)
        if code != 0 or garbage:
            raise RuntimeError(
                "probe on host %d exited %s; stray stdout %r; stderr:\n%s" % (i, code, garbage, err.strip())
            )
        results[i] = found
    return results


def check_found(checks: Checks, lab: Lab, i: int, found: list, expected: set[int], label: str) -> None:
    """Host i's probe reported exactly the hosts in expected, each with the right identity."""
    by_id: dict[str, list] = {}
    for f in found:
        by_id.setdefault(f.get("id"), []).append(f)
    want = {node_id(j): j for j in expected}
    checks.check(
        set(by_id) == set(want),
        "%s: host %d found %s" % (label, i, sorted(want.values()) or "nobody"),
        "found ids %s, expected %s" % (sorted(by_id), sorted(want)),
    )
    checks.check(node_id(i) not in by_id, "%s: host %d never reports itself" % (label, i))
    for ident, reports in sorted(by_id.items()):
        j = want.get(ident)
        if j is None:
            continue
        last = reports[-1]
        ours = "%s:%d" % (lab.addr(j), peer_port(j))
        lab_v4 = [a for a in last["addrs"] if a.startswith("10.77.")]
        problems = []
        if last["cluster"] != CLUSTER:
            problems.append("cluster %r" % last["cluster"])
        if last["env"] != ENVS[j]:
            problems.append("env %r, expected %r" % (last["env"], ENVS[j]))
        if last["proto"] != 1:
            problems.append("proto %r" % last["proto"])
        if last["api_port"] != api_port(j):
            problems.append("api_port %r" % last["api_port"])
        if lab_v4 != [ours]:
            problems.append("lab addresses %s, expected [%s]" % (lab_v4, ours))
        if any(not a.endswith(":%d" % peer_port(j)) for a in last["addrs"]):
            problems.append("an address without the peer port: %s" % last["addrs"])
        checks.check(
            not problems,
            "%s: host %d sees host %d as env %s at %s (all addresses: %s)"
            % (label, i, j, ENVS[j], ours, ", ".join(last["addrs"])),
            "; ".join(problems),
        )


def check_refuses_root_namespace(checks: Checks, probe: str) -> None:
    # `lo` only: even if the refusal were broken, nothing could leave the machine.
    argv = [probe, "--id", node_id(9), "--cluster", CLUSTER, "--env", "testing", "--iface", "lo",
            "--peer-port", "7409", "--secs", "1"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    checks.check(
        result.returncode != 0 and "refusing to run outside a named network namespace" in result.stderr,
        "the probe refuses to run in the root network namespace",
        "exit %d, stderr %r" % (result.returncode, result.stderr.strip()),
    )


def run(checks: Checks, lab: Lab, probe: str) -> None:
    # 2. The whole lab.
    started = time.time()
    results = run_probes(lab, probe, list(lab.hosts), WHOLE_SECS)
    for i in lab.hosts:
        check_found(checks, lab, i, results[i], set(lab.hosts) - {i}, "whole lab")
    firsts = [f["at_ms"] / 1000 - started for found in results.values() for f in found[:1]]
    if firsts:
        print("info  first peer found %.1f s after the probes started (slowest host: %.1f s)"
              % (min(firsts), max(firsts)), flush=True)

    # 3. Host 3 cut off.
    lab.partition([3])
    try:
        results = run_probes(lab, probe, list(lab.hosts), PARTITION_SECS)
    finally:
        lab.heal()
    check_found(checks, lab, 1, results[1], {2}, "partition [3]")
    check_found(checks, lab, 2, results[2], {1}, "partition [3]")
    check_found(checks, lab, 3, results[3], set(), "partition [3]")

    # 4. Host 2 restarts at once while host 1 keeps listening: first after a clean stop (its
    # goodbye reaches host 1), then after SIGKILL (no goodbye). Each start must be reported.
    watcher_secs = 3 * RESTART_SECS + 6
    watcher = start_probe(lab, probe, 1, watcher_secs)
    starts_ms = [time.time() * 1000]
    run_probes(lab, probe, [2], RESTART_SECS)
    starts_ms.append(time.time() * 1000)
    killed = start_probe(lab, probe, 2, 60)
    time.sleep(RESTART_SECS)  # the run to be killed: long enough to announce itself
    killed.kill()
    killed.communicate()
    starts_ms.append(time.time() * 1000)
    run_probes(lab, probe, [2], RESTART_SECS)
    code, found, garbage, err = finish(watcher, watcher_secs)
    if code != 0 or garbage:
        raise RuntimeError("watcher probe on host 1 exited %s; stderr:\n%s" % (code, err.strip()))
    reports = [f for f in found if f["id"] == node_id(2)]
    boots = []  # the boot numbers host 1 saw for each run of host 2
    for n, (begin, end) in enumerate(zip(starts_ms, starts_ms[1:] + [float("inf")])):
        boots.append({f["boot"] for f in reports if begin <= f["at_ms"] < end})
    how = ["first start", "restart after a clean stop", "restart after SIGKILL"]
    for n, seen in enumerate(boots):
        earlier = set().union(*boots[:n])
        checks.check(
            bool(seen - earlier),
            "restart: host 1 reports host 2 anew after its %s" % how[n],
            "boot numbers seen per run: %s" % boots,
        )


def main() -> int:
    probe = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "HERD_MDNS_PROBE", os.path.join(REPO, "target", "debug", "examples", "mdns_probe"))
    strict = os.environ.get("HERD_TEST_STRICT") == "1"
    if not os.access(probe, os.X_OK):
        print("FAIL mdns_test: no probe at %s (build it: cargo build -p node --example mdns_probe)" % probe)
        return 1
    try:
        check_environment()
    except LabError as e:
        print("%s mdns_test: needs the network lab: %s" % ("FAIL" if strict else "SKIP", e))
        return 1 if strict else SKIP

    checks = Checks()
    check_refuses_root_namespace(checks, probe)
    lab = None
    error = None
    try:
        lab = Lab(3)
        print("info  lab %s on %s" % (lab.prefix, lab.subnet), flush=True)
        run(checks, lab, probe)
    except (LabError, RuntimeError, subprocess.SubprocessError, KeyError, ValueError) as e:
        error = "%s: %s" % (type(e).__name__, e)
        print("FAIL  %s" % error, flush=True)
    finally:
        if lab is not None:
            lab.close()

    if error or checks.failed:
        print("FAIL mdns_test: %d passed, %d failed%s" % (
            checks.passed, len(checks.failed) + (1 if error else 0), " (" + error + ")" if error else ""))
        return 1
    print("PASS mdns_test: %d passed, 0 failed" % checks.passed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
