#!/usr/bin/env python3
"""Compare two herd binaries on the file view's hot paths, alternating them so that both see the
same machine: each round starts `herd serve --mount` on a fresh data dir with one binary, then
the other, and measures cached small-key reads (`readloop`, best of 3 loops) and small writes
through the mount (median of 200). As root, with /dev/fuse and a C compiler:

    python3 tests/bench/mount_ab.py --old OLD_HERD --new NEW_HERD [--rounds 4]

Build an older binary with `git worktree add /tmp/old REV` and
`CARGO_TARGET_DIR=$PWD/target cargo build --release -p node --bin herd` there (then copy it
aside before building the current one again).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile

import mount_bench as mb


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--old", required=True)
    p.add_argument("--new", required=True)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--reads", type=int, default=20_000)
    a = p.parse_args()
    work = tempfile.mkdtemp(prefix="herd-mount-ab.")
    loop = os.path.join(work, "readloop")
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run(["cc", "-O2", "-o", loop, os.path.join(here, "readloop.c")], check=True)
    res = {"old": [], "new": []}
    try:
        for _ in range(a.rounds):
            for name, binary in (("old", a.old), ("new", a.new)):
                d = os.path.join(work, name)
                shutil.rmtree(d, ignore_errors=True)
                os.makedirs(os.path.join(d, "mnt"))
                node = mb.Node(binary, os.path.join(d, "data"), os.path.join(d, "mnt"), False)
                try:
                    node.call("PUT", "/v1/kv/bench/small", "8080")
                    f = os.path.join(d, "mnt", "bench", "small")
                    reads = mb.best_of(3, lambda: mb.readloop(loop, f, a.reads))
                    writes = statistics.median(mb.writes(node, 200)[0])
                    res[name].append((reads, writes))
                finally:
                    node.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, binary in (("old", a.old), ("new", a.new)):
        runs = ", ".join(f"{r:,.0f}/s {w:.0f} µs" for r, w in res[name])
        print(f"{name} ({binary}): cached reads, median write per round: {runs}")


if __name__ == "__main__":
    main()
