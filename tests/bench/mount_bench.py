#!/usr/bin/env python3
"""The file view benchmark driver (run it through tests/bench/mount.sh).

Starts `herd serve --mount` in a temp dir (and later `--mount-read-only`), mounts a tmpfs beside
it, and measures in one run:
  - cached small-key reads: the C loop `readloop` (open, read, close) on the mount and on tmpfs;
  - just-invalidated reads: a key changed over REST, then the first open/read/close of its file
    (on tmpfs: the file rewritten, then the same read);
  - writes: open(O_TRUNC)/write/close of a small value through the mount against a REST PUT of
    the same value over a keep-alive HTTPS connection, both timed from this process;
  - `ls` of a directory with 10,000 keys, cold (kernel caches dropped) and warm, against tmpfs.
Prints a markdown report.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import herd_node


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
    if a.quick:
        n_tmpfs, n_rw, n_ro, iters, runs = (20_000, 2_000, 20_000, 30, 2)

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
