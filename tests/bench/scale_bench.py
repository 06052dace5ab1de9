#!/usr/bin/env python3
"""The scale benchmark driver (run it through tests/bench/scale.sh; needs root).

N hosts (default 32) in network namespaces on one bridge (tests/lab/lab.py), `herd serve` on
each with one cluster secret, mDNS on the lab interface only and no seeds; anti-entropy at
herd's default interval (2 s). In one run:

  1. discovery: from the first spawn until every node lists every other one alive;
  2. visible on all: sequential PUTs on node 1, each timed until the `put` event arrived on
     the watch streams of all the other nodes (one process, one monotonic clock: the sockets are
     opened inside the hosts' namespaces); p50 and p99 of the slowest node per write;
  3. idle: for a minute with no client writes, the bytes each host's `eth0` sent (everything:
     mDNS, TCP, TLS, probes, anti-entropy) and the CPU time of each herd process, per node and
     second;
  4. repair: the lab split into two halves for a minute (blackhole routes) with writes on both
     sides, then healed; time from the heal until every digest is equal.

Targets (issue 23): discovery < 10 s; visible on all p99 < 100 ms; idle traffic < 2 KB/s per
node. Progress goes to stderr, the markdown report to stdout.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True

import cluster_bench as cb  # noqa: E402
from cluster_bench import Bench, BenchError, Node, RawConn, log, now, pct  # noqa: E402
from lab import Lab, LabError, check_environment  # noqa: E402


def tx_bytes(lab: Lab, i: int) -> int:
    r = lab.run(i, ["cat", "/sys/class/net/%s/statistics/tx_bytes" % cb.LAB_IF],
                capture_output=True, text=True, check=True)
    return int(r.stdout.strip())


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Scale(Bench):
    def setup(self) -> None:
        a = self.args
        self.tmp = tempfile.mkdtemp(prefix="herd-scale-bench.", dir=a.tmp_dir)
        self.secret = os.path.join(self.tmp, "cluster.secret")
        subprocess.run([a.herd_bin, "cluster", "init", "--out", self.secret], check=True,
                       capture_output=True, text=True)
        self.lab = Lab(a.nodes)
        log("lab %s on %s with %d hosts; temp dir %s" % (self.lab.prefix, self.lab.subnet, a.nodes, self.tmp))
        for i in self.lab.hosts:
            self.nodes[i] = Node(self, i)
        t0 = now()
        for n in self.nodes.values():
            n.start()
        ready = [n.wait_ready(120) for n in self.nodes.values()]
        log("all %d nodes answer /v1/health (slowest %.2f s after its spawn)" % (a.nodes, max(ready)))
        self.wait_mesh(list(self.nodes.values()), 300, "mDNS discovery")
        self.results["discovery_s"] = now() - t0
        log("every node sees the other %d alive %.2f s after the first spawn"
            % (a.nodes - 1, self.results["discovery_s"]))

    def phase_visible(self) -> None:
        a = self.args
        others = [self.nodes[i] for i in self.lab.hosts if i != 1]
        watchers = [RawConn(n) for n in others]
        writer = [RawConn(self.nodes[1])]
        try:
            self.start_watches(watchers, 30)
            self.latency_run(writer, watchers, 20, "w", sequential=True)
            r = self.latency_run(writer, watchers, a.writes, "s", sequential=True)
            self.results["visible"] = r
            log("visible on all %d: p50 %s p99 %s max %s (%s lost)"
                % (len(others), cb.ms(pct(r["both_ms"], 50)), cb.ms(pct(r["both_ms"], 99)),
                   cb.ms(max(r["both_ms"]) if r["both_ms"] else float("nan")), sum(r["lost"])))
        finally:
            for c in watchers + writer:
                c.close()
        self.nodes[1].api.request("DELETE", "/v1/kv" + cb.LAT_PREFIX)
        if self.wait_equal(list(self.nodes.values()), now(), 60, "after the latency run")[0] is None:
            raise BenchError("digests differ 60 s after the latency run")

    def phase_idle(self) -> None:
        a = self.args
        nodes = list(self.nodes.values())
        log("idle for %.0f s: bytes sent by each host and CPU of each node" % a.idle_secs)
        time.sleep(5)  # let the last writes' pushes and rounds settle
        tx0 = {n.i: tx_bytes(self.lab, n.i) for n in nodes}
        cpu0 = {n.i: cpu_seconds(n.proc.pid) for n in nodes}
        t0 = now()
        time.sleep(a.idle_secs)
        dt = now() - t0
        tx = {n.i: (tx_bytes(self.lab, n.i) - tx0[n.i]) / dt for n in nodes}
        cpu = {n.i: (cpu_seconds(n.proc.pid) - cpu0[n.i]) / dt for n in nodes}
        rss = {n.i: rss_mib(n.proc.pid) for n in nodes}
        self.results["idle"] = {"secs": dt, "tx": tx, "cpu": cpu, "rss": rss}
        log("idle: bytes/s per node mean %.0f max %.0f; CPU per node mean %.2f%% max %.2f%%; RSS mean %.1f MiB"
            % (sum(tx.values()) / len(tx), max(tx.values()), 100 * sum(cpu.values()) / len(cpu),
               100 * max(cpu.values()), sum(rss.values()) / len(rss)))

    def phase_split(self) -> None:
        a = self.args
        hosts = list(self.lab.hosts)
        half = hosts[: len(hosts) // 2], hosts[len(hosts) // 2:]
        log("split %s | %s for %.0f s with %g PUT/s on each side" % (
            "1-%d" % half[0][-1], "%d-%d" % (half[1][0], half[1][-1]), a.split_secs, a.write_rate))
        self.lab.partition(*half)
        stop = threading.Event()
        counts = [0, 0]

        def writer(side: int) -> None:
            api = cb.Api(self.nodes[half[side][0]])
            k = 0
            try:
                while not stop.is_set():
                    api.request("PUT", "/v1/kv/split/s%d/k%d" % (side, k % 500), b'"%d"' % k)
                    counts[side] += 1
                    k += 1
                    stop.wait(1 / a.write_rate)
            finally:
                api.close()

        threads = [threading.Thread(target=writer, args=(s,), daemon=True) for s in (0, 1)]
        for t in threads:
            t.start()
        time.sleep(a.split_secs)
        stop.set()
        for t in threads:
            t.join(10)
        self.lab.heal()
        t0 = now()
        took, _ = self.wait_equal(list(self.nodes.values()), t0, a.deadline, "after the split")
        self.results["split"] = {"writes": counts, "repair_s": took}
        log("healed: every digest equal after %s" % cb.secs(took))

    def report(self) -> str:
        a, r = self.args, self.results
        v = r.get("visible", {})
        idle = r.get("idle", {})
        tx, cpu, rss = idle.get("tx", {}), idle.get("cpu", {}), idle.get("rss", {})
        both = v.get("both_ms", [])
        p99 = pct(both, 99) if both else float("nan")
        mean_tx = sum(tx.values()) / len(tx) if tx else float("nan")
        split = r.get("split", {})
        lines = [
            "Commit `%s`, `%s`, %s, %d nodes." % (a.commit, a.command, time.strftime("%Y-%m-%d"), a.nodes),
            "",
            "| measure | figure | target | met |",
            "|---|---|---|---|",
            "| discovery (first spawn -> every node sees all others alive) | %.2f s | < 10 s | %s |"
            % (r.get("discovery_s", float("nan")), cb.yes_no(r.get("discovery_s", 99) < 10)),
            "| write on node 1 -> visible on all %d others, p50 / p99 / max (%d writes, %d lost) | %s / %s / %s | p99 < 100 ms | %s |"
            % (a.nodes - 1, len(both), sum(v.get("lost", [])), cb.ms(pct(both, 50)), cb.ms(p99),
               cb.ms(max(both) if both else float("nan")), cb.yes_no(p99 < 100)),
            "| idle traffic per node (bytes sent on eth0), mean / max | %.0f / %.0f B/s | < 2 KB/s | %s |"
            % (mean_tx, max(tx.values()) if tx else float("nan"), cb.yes_no(mean_tx < 2048)),
            "| idle CPU per node, mean / max | %.2f%% / %.2f%% of a core | | |"
            % (100 * sum(cpu.values()) / max(len(cpu), 1), 100 * max(cpu.values(), default=0)),
            "| RSS per node, mean / max | %.1f / %.1f MiB | | |"
            % (sum(rss.values()) / max(len(rss), 1), max(rss.values(), default=0)),
            "| half the nodes split off for %.0f s (%d + %d writes), heal -> every digest equal | %s | | |"
            % (a.split_secs, *(split.get("writes", [0, 0])), cb.secs(split.get("repair_s"))),
        ]
        return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--herd-bin", default=os.path.join(cb.REPO, "target", "release", "herd"))
    p.add_argument("--nodes", type=int, default=32)
    p.add_argument("--writes", type=int, default=300, help="sequential writes timed (default 300)")
    p.add_argument("--idle-secs", type=float, default=60.0)
    p.add_argument("--split-secs", type=float, default=60.0)
    p.add_argument("--write-rate", type=float, default=20.0, help="PUT/s on each side of the split")
    p.add_argument("--anti-entropy-interval", default="2s")
    p.add_argument("--deadline", type=float, default=120.0)
    p.add_argument("--tmp-dir", default=os.environ.get("TMPDIR", "/tmp"))
    p.add_argument("--command", default="bash tests/bench/scale.sh " + " ".join(sys.argv[1:]))
    p.add_argument("--commit", default=None)
    a = p.parse_args()
    if not 2 <= a.nodes <= 250:
        p.error("--nodes must be within 2..250")
    if a.commit is None:
        r = subprocess.run(["git", "-C", cb.REPO, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
        a.commit = r.stdout.strip() or "unknown"
    try:
        check_environment()
    except LabError as e:
        print("error: the scale benchmark needs the network lab: %s" % e, file=sys.stderr)
        return 1
    bench = Scale(a)
    rc = 0
    try:
        bench.setup()
        bench.phase_visible()
        bench.phase_idle()
        bench.phase_split()
    except BenchError as e:
        log("stopped: %s" % e)
        rc = 3
    finally:
        if bench.lab is not None:
            bench.lab.close()
    print(bench.report(), end="")
    return rc


if __name__ == "__main__":
    sys.exit(main())
