#!/usr/bin/env python3
"""The file view benchmark driver (run it through tests/bench/mount.sh).

Starts `herd serve --mount` in a temp dir (and later `--mount-read-only`), mounts a tmpfs beside
it, and measures in one run:
  - cached small-key reads: the C loop `readloop` (open, read, close) on the mount and on tmpfs;
  - just-invalidated reads: a key changed over REST, then the first open/read/close of its file
    (on tmpfs: the file rewritten, then the same read);
  - writes: open(O_TRUNC)/write/close of a small value through the mount against a REST PUT of
    the same value over a keep-alive HTTPS connection, both timed from this process;
  - `ls` of a directory with 10,000 keys, cold (kernel caches dropped) and warm, against tmpfs;
  - REST write -> inotify event on the mount of the same node: one write at a time (1,000
    writes), and writes sent at a fixed rate (1,000/s) by several connections, each to its own
    key; the time from sending the PUT to the file's IN_CLOSE_WRITE (and to its IN_MODIFY), and
    how long after the PUT's answer the IN_CLOSE_WRITE came.
Prints a markdown report.
"""

import argparse
import ctypes
import http.client
import json
import os
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import herd_node

IN_MODIFY, IN_CLOSE_WRITE = 0x2, 0x8


def log(msg):
    print(f"==> {msg}", file=sys.stderr, flush=True)


def pct(samples, p):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * p))]


class Node(herd_node.Node):
    """`herd serve --mount MNT` (read-only if asked); ready once MNT is mounted."""

    def __init__(self, herd, data, mnt, read_only):
        self.mnt = mnt
        args = ["--mount", mnt] + (["--mount-read-only"] if read_only else [])
        super().__init__(herd, data, args, ready=lambda: os.path.ismount(mnt), deadline=60)

    def call(self, method, path, body=None):
        return super().call(method, path, body, ok=(200,))[1]

    def stop(self):
        self.conn.close()
        super().stop()
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", self.mnt], check=False)


def readloop(binary, path, n):
    out = subprocess.run([binary, path, str(n)], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[0])  # reads/s


def best_of(runs, f):
    return max(f() for _ in range(runs))


def timed_read(path):
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    data = os.read(fd, 4096)
    os.close(fd)
    return time.perf_counter() - t0, data


def invalidated_reads(node, tmpfs_file, iters):
    """First read after a change: over REST for the mount, a rewrite for tmpfs."""
    mnt_file = os.path.join(node.mnt, "bench", "small")
    mount_us, tmpfs_us, stale = [], [], 0
    for i in range(iters):
        node.call("PUT", "/v1/kv/bench/small", str(1000 + i))
        time.sleep(0.003)  # the invalidation travels asynchronously; give it a moment
        dt, data = timed_read(mnt_file)
        if data != f"{1000 + i}\n".encode():
            stale += 1
        mount_us.append(dt * 1e6)
        with open(tmpfs_file, "w") as f:
            f.write(f"{1000 + i}\n")
        time.sleep(0.003)
        dt, _ = timed_read(tmpfs_file)
        tmpfs_us.append(dt * 1e6)
    return mount_us, tmpfs_us, stale


def writes(node, iters):
    mnt_file = os.path.join(node.mnt, "bench", "w")
    mount_us, rest_us = [], []
    for i in range(iters):
        body = f"{i}\n".encode()
        t0 = time.perf_counter()
        fd = os.open(mnt_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, body)
        os.close(fd)
        mount_us.append((time.perf_counter() - t0) * 1e6)
        t0 = time.perf_counter()
        node.call("PUT", "/v1/kv/bench/r", str(i))
        rest_us.append((time.perf_counter() - t0) * 1e6)
    got = json.loads(node.call("GET", "/v1/kv/bench/w"))
    if got != iters - 1:
        sys.exit(f"mount writes: last value {got!r}, expected {iters - 1}")
    return mount_us, rest_us


class Inotify:
    """An inotify watch on one directory; `events()` yields (time read, mask, name)."""

    def __init__(self, directory, mask):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, directory.encode(), mask) < 0:
            sys.exit(f"inotify on {directory}: {os.strerror(ctypes.get_errno())}")

    def read(self, timeout):
        """The events available within `timeout` s: [(time, mask, name)]."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        buf = os.read(self.fd, 1 << 16)
        now = time.perf_counter()
        out, i = [], 0
        while i < len(buf):
            _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, i)
            name = buf[i + 16:i + 16 + length].rstrip(b"\0").decode()
            out.append((now, mask, name))
            i += 16 + length
        return out

    def close(self):
        os.close(self.fd)


def inotify_one_at_a_time(node, iters):
    """PUT a key, wait for its IN_CLOSE_WRITE on the mount, repeat."""
    watch = Inotify(os.path.join(node.mnt, "ino"), IN_MODIFY | IN_CLOSE_WRITE)
    to_close, to_modify, after_ack, lost = [], [], [], 0
    for i in range(iters):
        t0 = time.perf_counter()
        node.call("PUT", "/v1/kv/ino/key", str(i))
        acked = time.perf_counter()
        modified, deadline = None, time.time() + 2
        while time.time() < deadline:
            done = None
            for t, mask, name in watch.read(0.5):
                if name == "key" and mask & IN_MODIFY and modified is None:
                    modified = t
                if name == "key" and mask & IN_CLOSE_WRITE:
                    done = t
            if done is not None:
                break
        else:
            lost += 1
            continue
        to_close.append((done - t0) * 1e3)
        to_modify.append(((modified or done) - t0) * 1e3)
        after_ack.append(max(0.0, done - acked) * 1e3)
    watch.close()
    return to_close, to_modify, after_ack, lost


def inotify_at_rate(node, rate, seconds, conns=8):
    """PUTs sent at `rate`/s by `conns` connections, each to its own key (prepared); the
    latency of each key's IN_CLOSE_WRITE from the moment its PUT was sent, and from the moment
    it was answered (0 if before: what the replay adds to a durable write)."""
    total = int(rate * seconds)
    watch = Inotify(os.path.join(node.mnt, "rate"), IN_CLOSE_WRITE)
    sent, acked, seen = {}, {}, {}
    stop = threading.Event()

    def reader():
        while not stop.is_set() or len(seen) < len(sent):
            events = watch.read(0.2)
            if not events and stop.is_set():
                break
            for t, _mask, name in events:
                seen.setdefault(name, t)

    def writer(c):
        conn = http.client.HTTPSConnection(node.host, node.port, context=node.ctx)
        headers = {"Authorization": f"Bearer {node.token}", "Content-Type": "application/json"}
        start = time.perf_counter() + 0.1
        for i in range(c, total, conns):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent[f"k{i}"] = time.perf_counter()
            conn.request("PUT", f"/v1/kv/rate/k{i}", body="1", headers=headers)
            r = conn.getresponse()
            r.read()
            acked[f"k{i}"] = time.perf_counter()
            if r.status != 200:
                sys.exit(f"PUT /rate/k{i}: {r.status}")
        conn.close()

    rd = threading.Thread(target=reader)
    rd.start()
    began = time.perf_counter()
    writers = [threading.Thread(target=writer, args=(c,)) for c in range(conns)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    achieved = total / (time.perf_counter() - began - 0.1)
    time.sleep(2)
    stop.set()
    rd.join()
    watch.close()
    lat = [(seen[k] - t) * 1e3 for k, t in sent.items() if k in seen]
    after_ack = [max(0.0, seen[k] - t) * 1e3 for k, t in acked.items() if k in seen]
    return lat, after_ack, total - len(lat), achieved


def drop_caches():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def time_cmd(cmd, cold):
    if cold:
        drop_caches()
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - t0) * 1e3


def ls_times(directory, runs):
    out = {}
    for name, cmd in (("ls", ["ls", directory]), ("ls -l", ["ls", "-l", directory])):
        time_cmd(cmd, False)
        out[name] = (
            statistics.median(time_cmd(cmd, True) for _ in range(runs)),
            statistics.median(time_cmd(cmd, False) for _ in range(runs)),
        )
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--herd-bin", required=True)
    p.add_argument("--readloop", required=True)
    p.add_argument("--commit", default="?")
    p.add_argument("--command", default="bash tests/bench/mount.sh")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    n_tmpfs, n_rw, n_ro, iters, runs = (200_000, 20_000, 200_000, 300, 5)
    ino_iters, rate, rate_secs = 1000, 1000, 3
    if a.quick:
        n_tmpfs, n_rw, n_ro, iters, runs = (20_000, 2_000, 20_000, 30, 2)
        ino_iters, rate, rate_secs = 100, 1000, 1

    work = tempfile.mkdtemp(prefix="herd-mount-bench.")
    data, mnt, tmpfs = (os.path.join(work, d) for d in ("data", "mnt", "tmpfs"))
    for d in (mnt, tmpfs):
        os.makedirs(d)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", tmpfs], check=True)
    node = None
    try:
        tmpfs_file = os.path.join(tmpfs, "small")
        with open(tmpfs_file, "w") as f:
            f.write("8080\n")
        os.makedirs(os.path.join(tmpfs, "many"))
        for i in range(10_000):
            with open(os.path.join(tmpfs, "many", f"k{i}"), "w") as f:
                f.write("true\n")

        log("writable mount: herd serve --mount")
        node = Node(a.herd_bin, data, mnt, read_only=False)
        node.call("PUT", "/v1/kv/bench/small", "8080")
        ops = [{"op": "put", "path": f"/many/k{i}", "value": True} for i in range(10_000)]
        node.call("POST", "/v1/batch", json.dumps({"ops": ops}))
        mnt_file = os.path.join(mnt, "bench", "small")
        log("cached reads")
        rw_tmpfs = best_of(3, lambda: readloop(a.readloop, tmpfs_file, n_tmpfs))
        rw_mount = best_of(3, lambda: readloop(a.readloop, mnt_file, n_rw))
        log("just-invalidated reads")
        rw_inv, tmpfs_inv, rw_stale = invalidated_reads(node, tmpfs_file, iters)
        log("writes")
        w_mount, w_rest = writes(node, iters)
        log("ls of 10,000 keys")
        ls_mount = ls_times(os.path.join(mnt, "many"), runs)
        ls_tmpfs = ls_times(os.path.join(tmpfs, "many"), runs)
        log(f"REST write -> inotify event, {ino_iters} writes one at a time")
        node.call("PUT", "/v1/kv/ino/key", "0")
        os.listdir(os.path.join(mnt, "ino"))
        time.sleep(0.5)
        ino_close, ino_modify, ino_after_ack, ino_lost = inotify_one_at_a_time(node, ino_iters)
        log(f"REST write -> inotify event at {rate}/s for {rate_secs} s")
        ops = [{"op": "put", "path": f"/rate/k{i}", "value": 0}
               for i in range(int(rate * rate_secs))]
        node.call("POST", "/v1/batch", json.dumps({"ops": ops}))
        os.listdir(os.path.join(mnt, "rate"))
        time.sleep(1)  # the preparing batch's own replay is over before the watch starts
        rate_lat, rate_after_ack, rate_lost, rate_achieved = inotify_at_rate(node, rate, rate_secs)
        node.stop()

        log("read-only mount: herd serve --mount --mount-read-only")
        node = Node(a.herd_bin, data, mnt, read_only=True)
        with open(tmpfs_file, "w") as f:
            f.write("8080\n")
        node.call("PUT", "/v1/kv/bench/small", "8080")
        ro_tmpfs = best_of(3, lambda: readloop(a.readloop, tmpfs_file, n_tmpfs))
        ro_mount = best_of(3, lambda: readloop(a.readloop, mnt_file, n_ro))
        ro_inv, tmpfs_inv2, ro_stale = invalidated_reads(node, tmpfs_file, iters)
        ls_ro = ls_times(os.path.join(mnt, "many"), runs)
        node.stop()
        node = None
    finally:
        if node is not None:
            node.stop()
        subprocess.run(["umount", tmpfs], check=False)

    us = lambda xs: f"{statistics.median(xs):.0f} µs / {pct(xs, 0.99):.0f} µs"
    ms = lambda xs: f"{statistics.median(xs):.2f} ms / {pct(xs, 0.99):.2f} ms"
    p99_ok = lambda xs: "yes" if pct(xs, 0.99) < 5 else "**no**"
    lines = [
        "## File view benchmark",
        "",
        f"- command: `{a.command}`",
        f"- date: {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}; commit: {a.commit}",
        f"- machine: {os.cpu_count()} cores, kernel {os.uname().release}; the node's store on "
        "the temp dir's disk, the reference files on tmpfs",
        "",
        "| measurement | mount | tmpfs (same run) | ratio | target |",
        "|---|--:|--:|--:|---|",
        f"| cached small-key reads, writable mount (`readloop`: open, read, close) | "
        f"{rw_mount:,.0f}/s | {rw_tmpfs:,.0f}/s | {rw_mount / rw_tmpfs:.0%} | ≥ 25% of tmpfs: "
        f"{'yes' if rw_mount / rw_tmpfs >= 0.25 else '**no**'} |",
        f"| cached small-key reads, read-only mount | {ro_mount:,.0f}/s | {ro_tmpfs:,.0f}/s | "
        f"{ro_mount / ro_tmpfs:.0%} | ≥ 25% of tmpfs: "
        f"{'yes' if ro_mount / ro_tmpfs >= 0.25 else '**no**'} |",
        f"| just-invalidated read, writable mount (p50 / p99) | {us(rw_inv)} | {us(tmpfs_inv)} | "
        f"| stale reads: {rw_stale}/{iters} |",
        f"| just-invalidated read, read-only mount (p50 / p99) | {us(ro_inv)} | {us(tmpfs_inv2)} "
        f"| | stale reads: {ro_stale}/{iters} |",
        "",
        "| measurement | mount | REST (keep-alive HTTPS) | ratio | target |",
        "|---|--:|--:|--:|---|",
        f"| small write, p50 / p99 (open O_TRUNC, write, close vs PUT) | {us(w_mount)} | "
        f"{us(w_rest)} | {statistics.median(w_mount) / statistics.median(w_rest):.2f}x | "
        f"≤ 2x REST: "
        f"{'yes' if statistics.median(w_mount) <= 2 * statistics.median(w_rest) else '**no**'} |",
        "",
        "| REST write -> inotify event on the same node's mount (writable) | p50 / p99 | "
        "events lost | target |",
        "|---|--:|--:|---|",
        f"| one at a time ({ino_iters} writes): PUT sent -> IN_CLOSE_WRITE | {ms(ino_close)} | "
        f"{ino_lost} | p99 < 5 ms: {p99_ok(ino_close)} |",
        f"| same: PUT sent -> IN_MODIFY | {ms(ino_modify)} | | |",
        f"| same: PUT answered -> IN_CLOSE_WRITE (0 if before) | {ms(ino_after_ack)} | | |",
        f"| at {rate}/s ({rate_achieved:,.0f}/s achieved, {len(rate_lat) + rate_lost} writes, "
        f"8 connections, a key each): PUT sent -> IN_CLOSE_WRITE | {ms(rate_lat)} | {rate_lost} | "
        f"p99 < 5 ms: {p99_ok(rate_lat)} |",
        f"| same: PUT answered -> IN_CLOSE_WRITE (0 if before) | {ms(rate_after_ack)} | | |",
        "",
        "| `ls` of 10,000 keys (median, incl. starting `ls`) | cold (caches dropped) | warm | "
        "target |",
        "|---|--:|--:|---|",
    ]
    for label, res in (("writable mount", ls_mount), ("read-only mount", ls_ro),
                       ("tmpfs", ls_tmpfs)):
        for cmd, (cold, warm) in res.items():
            target = ""
            if label != "tmpfs" and cmd == "ls":
                target = f"< 100 ms: {'yes' if max(cold, warm) < 100 else '**no**'}"
            lines.append(f"| `{cmd}`, {label} | {cold:.1f} ms | {warm:.1f} ms | {target} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if a.out:
        with open(a.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
