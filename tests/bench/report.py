#!/usr/bin/env python3
"""Renders the single-node benchmark results as a markdown report (tests/bench/single-node.sh).

Input: a tab-separated results file, one record a line:
  meta     <name> <value>
  run      <server> <workload> <requests> <duration_us> <p50_us> <p99_us>
           <err_connect> <err_read> <err_write> <err_status> <err_timeout>
  mem      <keys> <key_bytes> <value_bytes> <rss_empty_kb> <rss_loaded_kb> <load_seconds>
  restart  <ready_ms> <rss_restarted_kb> <readback: ok|failed>
  round    <n> <server> <workload> <requests> ... (as run: one run of a paired round)

Targets (from the issue): PUT >= 5x etcd and >= 0.5x ceiling, GET >= 10x etcd and >= 0.6x ceiling,
judged at 64 connections (where the issue measured them; with one connection the figures are shown
for information); herd's p99 never worse than etcd's (every workload); at most 300 bytes of RSS per
key beyond key and value; restart with 1,000,000 keys in under 3 s.

With paired rounds (herd and the ceiling side by side, taking turns), the ceiling targets are
judged on the median of the rounds' ratios instead of the one run of each: the machine's speed
drifts between runs minutes apart, and the rounds measure the two close together in time.
"""

import statistics
import sys

SERVERS = ["herd", "etcd", "ceiling"]
WORKLOADS = [("put", 1), ("put", 64), ("get", 1), ("get", 64)]
THROUGHPUT_TARGETS = {"put": (5.0, 0.5), "get": (10.0, 0.6)}  # (x etcd, x ceiling)
TARGET_CONNS = 64
RSS_TARGET = 300
RESTART_TARGET_MS = 3000
RESTART_TARGET_KEYS = 1_000_000


class Run:
    def __init__(self, f):
        (self.requests, self.duration_us, self.p50_us, self.p99_us,
         self.connect, self.read, self.write, self.status, self.timeout) = (int(x) for x in f)
        self.rps = self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0
        self.errors = self.connect + self.read + self.write + self.status + self.timeout

    def error_text(self):
        parts = [("non-2xx", self.status), ("connect", self.connect), ("read", self.read),
                 ("write", self.write), ("timeout", self.timeout)]
        return ", ".join("%d %s" % (n, name) for name, n in parts if n)


def ms(us):
    v = us / 1000.0
    return "%.2f ms" % v if v < 10 else "%.1f ms" % v if v < 100 else "%.0f ms" % v


def rate(r):
    return "{:,.0f}".format(r.rps)


def ratio(a, b):
    if a is None or b is None or not b.rps:
        return "—"
    x = a.rps / b.rps
    return "%.1fx" % x if x >= 10 else "%.2fx" % x


def label_of(workload):
    op, conns = workload.split("-c")
    return "%s c=%s" % (op.upper(), conns)


def yes_no(ok):
    return "yes" if ok else "**NO**"


def main():
    path = sys.argv[1]
    meta, runs, mem, restart = {}, {}, None, None
    rounds = {}  # (round, server, workload) -> Run
    for line in open(path):
        f = line.rstrip("\n").split("\t")
        if not f or not f[0]:
            continue
        if f[0] == "meta":
            meta[f[1]] = f[2] if len(f) > 2 else ""
        elif f[0] == "run":
            runs[(f[1], f[2])] = Run(f[3:12])
        elif f[0] == "mem":
            mem = f[1:]
        elif f[0] == "restart":
            restart = f[1:]
        elif f[0] == "round":
            rounds[(int(f[1]), f[2], f[3])] = Run(f[4:13])

    # Per workload: the ratio herd/ceiling of every complete round without errors, and its median.
    paired = {}
    for wl in sorted({w for _, _, w in rounds}):
        ratios, bad = [], 0
        for n in sorted({n for n, _, w in rounds if w == wl}):
            h, c = rounds.get((n, "herd", wl)), rounds.get((n, "ceiling", wl))
            if h is None or c is None or h.errors or c.errors or not c.rps:
                bad += 1
                continue
            ratios.append(h.rps / c.rps)
        paired[wl] = (statistics.median(ratios) if ratios else None, ratios, bad)

    out = []
    w = out.append
    w("## Single-node benchmark")
    w("")
    w("- command: `%s`" % meta.get("command", "?"))
    w("- date: %s; commit: %s" % (meta.get("date", "?"), meta.get("commit", "?")))
    w("- machine: %s cores (%s), kernel %s, data on %s" % (
        meta.get("nproc", "?"), meta.get("cpu", "?"), meta.get("kernel", "?"), meta.get("fs", "?")))
    w("- load: wrk %s, each run %s after a %s warm-up; 1 connection = `-t1 -c1`, 64 = `-t2 -c64`, "
      "keep-alive HTTPS; PUT values are %s-byte JSON strings over %s keys; GETs read prefilled keys"
      % (meta.get("wrk", "?"), meta.get("duration", "?"), meta.get("warmup", "?"),
         meta.get("value_bytes", "?"), meta.get("bench_keys", "?")))
    w("- etcd %s (one member, fsync on, `--auto-tls`, JSON gateway `/v3/kv/put`, `/v3/kv/range`); "
      "ceiling = `tests/src/bin/ceiling.rs` (hyper + rustls, in memory)" % meta.get("etcd", "?"))
    w("")
    w("| workload | herd req/s | herd p50 | herd p99 | etcd req/s | etcd p50 | etcd p99 "
      "| ceiling req/s | ceiling p50 | ceiling p99 | herd/etcd | herd/ceiling | targets |")
    w("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    error_runs = []
    missed = []
    for op, conns in WORKLOADS:
        wl = "%s-c%d" % (op, conns)
        cells = [label_of(wl)]
        for s in SERVERS:
            r = runs.get((s, wl))
            if r is None:
                cells += ["—", "—", "—"]
            else:
                flag = " (errors!)" if r.errors else ""
                cells += [rate(r) + flag, ms(r.p50_us), ms(r.p99_us)]
                if r.errors:
                    error_runs.append(
                        "%s %s: %s in %d requests" % (s, wl, r.error_text(), r.requests))
        h, e, c = runs.get(("herd", wl)), runs.get(("etcd", wl)), runs.get(("ceiling", wl))
        cells.append(ratio(h, e))
        cells.append(ratio(h, c))
        checks = []
        x_etcd, x_ceiling = THROUGHPUT_TARGETS[op]
        invalid = any(r is not None and r.errors for r in (h, e, c))
        if h is None:
            checks.append("not measured")
        elif invalid:
            checks.append("invalid (errors)")
        else:
            if conns == TARGET_CONNS:
                if e:
                    ok = e.rps and h.rps >= x_etcd * e.rps
                    checks.append("≥%gx etcd: %s" % (x_etcd, yes_no(ok)))
                    if not ok:
                        missed.append("%s >= %gx etcd" % (wl, x_etcd))
                med = paired.get(wl, (None, [], 0))[0]
                if med is not None:
                    ok = med >= x_ceiling
                    checks.append("≥%g ceiling (median of paired rounds, %.3fx): %s"
                                  % (x_ceiling, med, yes_no(ok)))
                    if not ok:
                        missed.append("%s >= %g ceiling (paired rounds)" % (wl, x_ceiling))
                elif c:
                    ok = c.rps and h.rps >= x_ceiling * c.rps
                    checks.append("≥%g ceiling: %s" % (x_ceiling, yes_no(ok)))
                    if not ok:
                        missed.append("%s >= %g ceiling" % (wl, x_ceiling))
            if e:
                ok = h.p99_us <= e.p99_us
                checks.append("p99 ≤ etcd: %s" % yes_no(ok))
                if not ok:
                    missed.append("%s p99 <= etcd" % wl)
        cells.append("; ".join(checks) if checks else "—")
        w("| " + " | ".join(cells) + " |")
    w("")
    w("Throughput targets are judged at 64 connections (PUT ≥5x etcd and ≥0.5x ceiling, "
      "GET ≥10x etcd and ≥0.6x ceiling); p99 ≤ etcd's on every workload.")
    w("")
    if rounds:
        w("### Paired rounds: herd and the ceiling side by side")
        w("")
        w("A fresh herd and a fresh ceiling run at the same time (the one not measured is idle) "
          "and take turns, each run %s after a %s warm-up; odd rounds measure herd first, even "
          "rounds the ceiling. The ceiling targets above are judged on the median ratio."
          % (meta.get("duration", "?"), meta.get("warmup", "?")))
        w("")
        wls = sorted({w_ for _, _, w_ in rounds}, key=lambda x: (x.split("-")[0] != "put", x))
        head = ["round", "first"]
        for wl in wls:
            label = label_of(wl)
            head += ["%s herd" % label, "%s ceiling" % label, "herd/ceiling"]
        w("| " + " | ".join(head) + " |")
        w("|---|---|" + "--:|--:|--:|" * len(wls))
        for n in sorted({n for n, _, _ in rounds}):
            cells = [str(n), "herd" if n % 2 == 1 else "ceiling"]
            for wl in wls:
                h, c = rounds.get((n, "herd", wl)), rounds.get((n, "ceiling", wl))
                for r in (h, c):
                    if r is None:
                        cells.append("—")
                    else:
                        cells.append(rate(r) + (" (errors!)" if r.errors else ""))
                        if r.errors:
                            error_runs.append("round %d %s %s: %s in %d requests" % (
                                n, "herd" if r is h else "ceiling", wl, r.error_text(),
                                r.requests))
                cells.append(ratio(h, c))
            w("| " + " | ".join(cells) + " |")
        meds = []
        for wl in wls:
            med, ratios, bad = paired[wl]
            if med is None:
                meds.append("%s: no complete round" % label_of(wl))
            else:
                meds.append("%s **%.2fx** (rounds: %s%s)" % (
                    label_of(wl), med, ", ".join("%.2f" % x for x in ratios),
                    "; %d round(s) left out for errors" % bad if bad else ""))
        w("")
        w("Median herd/ceiling: " + "; ".join(meds) + ".")
        w("")

    if mem:
        keys, key_bytes, value_bytes, rss0, rss1, load_s = mem
        keys, key_bytes, value_bytes = int(keys), int(key_bytes), int(value_bytes)
        rss0, rss1, load_s = int(rss0) * 1024, int(rss1) * 1024, float(load_s)
        per_key = (rss1 - rss0 - key_bytes - value_bytes) / keys
        ok = per_key <= RSS_TARGET
        scope = ""
        if keys < RESTART_TARGET_KEYS:
            scope = " — the target is for {:,} keys; fixed costs weigh more with fewer".format(
                RESTART_TARGET_KEYS)
        if not ok:
            missed.append("RSS per key <= %d B" % RSS_TARGET)
        w("- memory, herd with {:,} keys (paths {:,} B + values {:,} B, loaded through `/v1/batch` "
          "in {:.1f} s): RSS {:.1f} MiB empty -> {:.1f} MiB loaded = **{:.0f} bytes per key** "
          "beyond "
          "key and value (target ≤ {}: {}{})".format(
              keys, key_bytes, value_bytes, load_s, rss0 / 2**20, rss1 / 2**20, per_key, RSS_TARGET,
              yes_no(ok), scope))
    else:
        w("- memory: not measured")
    if restart:
        ready_ms, rss2, readback = float(restart[0]), int(restart[1]) * 1024, restart[2]
        n = int(mem[0]) if mem else 0
        ok = ready_ms < RESTART_TARGET_MS and readback == "ok"
        scope = ""
        if n < RESTART_TARGET_KEYS:
            scope = " — the target is for {:,} keys".format(RESTART_TARGET_KEYS)
        if not ok:
            missed.append("restart < 3 s")
        w("- restart after SIGKILL with {:,} keys: **{:.0f} ms** from spawn to `/v1/health` 200 "
          "(target < {} ms: {}{}); loaded keys read back: {}; RSS after restart {:.1f} MiB".format(
              n, ready_ms, RESTART_TARGET_MS, yes_no(ok), scope, readback, rss2 / 2**20))
    else:
        w("- restart: not measured")
    w("")
    if error_runs:
        w("**Runs with errors (their figures are not valid):**")
        for x in error_runs:
            w("- " + x)
        w("")
    if missed:
        w("Targets missed: " + "; ".join(missed) + ".")
    if error_runs:
        w("Targets were not judged on workloads whose runs had errors.")
    elif not missed and any(s == "herd" for s, _ in runs):
        w("All measured targets met.")
    notes = meta.get("notes", "")
    if notes:
        w("")
        w("Notes: " + notes)
    print("\n".join(out))
    sys.exit(3 if error_runs else 0)


if __name__ == "__main__":
    main()
