#!/usr/bin/env python3
"""The watch resume benchmark driver (run it through tests/bench/watch.sh).

Starts `herd serve` in a temp dir, fills its change log with EVENTS events (puts of small
values to 1,000 keys, one event per write), notes the revision before them, then for each round
stops the node (`kill -9`, or SIGTERM) and starts it again, and measures from the moment the
new process is spawned:
  - until its API answers (`/v1/health`);
  - until a watcher resuming with `?since=REV` has received all EVENTS events and `synced`
    (retrying the connection every 2 ms until the node accepts it), checking that it got
    exactly the events after REV, in order, and no `compacted`;
  - for reference, until a watcher without `since` (the old behaviour after a restart: start
    over) has the current state of the 1,000 keys and `synced`.
Prints a markdown report.
"""

import argparse
import http.client
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

import herd_node


def log(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def fill(node, events, keys):
    """Writes `events` puts (one event each) over one keep-alive connection."""
    for i in range(events):
        node.call("PUT", f"/v1/kv/app/k{i % keys}", json.dumps(f"{i:08d}" + "x" * 50))


def revision(node):
    node.conn.request("GET", "/v1/kv/app/k0", headers={"Authorization": f"Bearer {node.token}"})
    r = node.conn.getresponse()
    r.read()
    return int(r.getheader("x-herd-revision"))


def watch_until_synced(host, port, ctx, token, path, deadline):
    """Opens the SSE stream at `path` (retrying until the node accepts it) and reads it until
    the `synced` event. Returns (seconds connected after the first try, events before synced,
    their revisions, whether an error came)."""
    while True:
        try:
            conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}",
                                               "Accept": "text/event-stream"})
            r = conn.getresponse()
            break
        except (ConnectionError, OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                sys.exit(f"watch {path}: the node did not accept a connection in time")
            time.sleep(0.002)
    if r.status != 200:
        sys.exit(f"watch {path}: {r.status} {r.read()[:300]!r}")
    # Read in large chunks until the `synced` event, parse afterwards: the client must not be
    # what is measured.
    buf = bytearray()
    while not (b"event: synced\n" in buf[-4096:] and buf.endswith(b"}\n\n")):
        chunk = r.read1(1 << 16)
        if not chunk:
            sys.exit(f"watch {path}: the stream ended before synced")
        buf += chunk
    conn.close()
    events, revisions = 0, []
    for block in bytes(buf).decode().split("\n\n"):
        for line in block.split("\n"):
            if not line.startswith("data:"):
                continue
            try:
                data = json.loads(line[5:])
            except json.JSONDecodeError:
                sys.exit(f"watch {path}: bad event line {line[:200]!r}")
            kind = data.get("type")
            if kind == "synced":
                return events, revisions
            if kind == "error":
                sys.exit(f"watch {path}: {data}")
            events += 1
            revisions.append(data.get("revision"))
    sys.exit(f"watch {path}: no synced event parsed")


def round_trip(node, since, events, keys, how):
    """Stops the node (`how`: kill or term), starts it again; the times from the spawn."""
    if how == "kill":
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(timeout=60)
    else:
        node.stop()
    api_file = os.path.join(node.data, "node.json")
    os.remove(api_file)
    spawned = time.monotonic()
    proc = subprocess.Popen(
        [node.herd, "serve", "--data-dir", node.data, "--api-addr", f"127.0.0.1:{node.port}"],
        stdout=node.log, stderr=node.log, env=dict(os.environ, HERD_LOG="warn"))
    node.proc = proc
    deadline = spawned + 120
    # Health: the first answer of /v1/health.
    while True:
        if proc.poll() is not None:
            sys.exit(f"herd serve exited with {proc.returncode}")
        try:
            c = http.client.HTTPSConnection(node.host, node.port, context=node.ctx, timeout=5)
            c.request("GET", "/v1/health")
            if c.getresponse().status == 200:
                break
        except (ConnectionError, OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline:
            sys.exit("the node did not become healthy in time")
        time.sleep(0.002)
    healthy = time.monotonic() - spawned
    got, revs = watch_until_synced(node.host, node.port, node.ctx, node.token,
                                   f"/v1/watch/app?since={since}", deadline)
    resumed = time.monotonic() - spawned
    if got != events:
        sys.exit(f"the resume after the restart got {got} events, not {events}")
    if revs != sorted(revs) or revs[0] != since + 1:
        sys.exit(f"the resume's revisions are not exactly those after {since}: {revs[:5]}...")
    t0 = time.monotonic()
    fresh, _ = watch_until_synced(node.host, node.port, node.ctx, node.token, "/v1/watch/app",
                                  deadline)
    if fresh != keys:
        sys.exit(f"a fresh watch got {fresh} keys, not {keys}")
    return healthy, resumed, time.monotonic() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--herd-bin", required=True)
    p.add_argument("--commit", default="")
    p.add_argument("--command", default="bash tests/bench/watch.sh")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    events = 1_000 if a.quick else 10_000
    keys = 100 if a.quick else 1_000
    rounds = 2 if a.quick else 5
    with tempfile.TemporaryDirectory() as work:
        data = os.path.join(work, "data")
        node = herd_node.Node(a.herd_bin, data)
        # The window is the default 10,000 events: fill it exactly, after one first write.
        node.call("PUT", "/v1/kv/app/k0", "0")
        since = revision(node)
        log(f"writing {events} events")
        t0 = time.monotonic()
        fill(node, events, keys)
        filled = time.monotonic() - t0
        status = json.loads(node.call("GET", "/v1/status")[1])
        log_state = status.get("change_log", {})
        rows = []
        for how in ["kill", "term"]:
            for r in range(rounds):
                log(f"{how} round {r + 1}/{rounds}")
                rows.append((how, *round_trip(node, since, events, keys, how)))
        size = os.path.getsize(os.path.join(data, "changes.log"))
        node.stop()
    out = [
        "#### Watch resume after a restart" + (" (quick)" if a.quick else ""),
        "",
        f"Commit `{a.commit}`, `{a.command}`. {events:,} events in the change log "
        f"(puts of 60-byte strings to {keys:,} keys, written in {filled:.1f} s), "
        f"the node's change log {log_state}; `changes.log` {size / 1e6:.1f} MB. "
        "Times from spawning `herd serve` again, medians of "
        f"{rounds} rounds (min-max).",
        "",
        "| stopped by | API answers | watcher resumed with since (all events + synced) | "
        "fresh watch after that (state + synced) |",
        "|---|---|---|---|",
    ]
    for how in ["kill", "term"]:
        sel = [r for r in rows if r[0] == how]

        def col(i):
            xs = [r[i] * 1000 for r in sel]
            return f"{statistics.median(xs):.0f} ms ({min(xs):.0f}-{max(xs):.0f})"
        label = "`kill -9`" if how == "kill" else "SIGTERM"
        out.append(f"| {label} | {col(1)} | {col(2)} | {col(3)} |")
    text = "\n".join(out) + "\n"
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
