#!/usr/bin/env python3
"""Spawns a server and times how long it takes until its health URL answers 200.

  spawn_wait.py --health URL --pid-file FILE --log FILE [--cacert FILE] [--deadline S] -- CMD...

The clock starts just before the spawn; the URL is polled every 10 ms over a fresh HTTPS connection.
The server keeps running after this script exits (its pid is written to --pid-file right after the
spawn, so the caller can stop it). Prints one JSON line {"pid", "ready_ms"}; exits non-zero if the
server exits or the deadline passes first.
"""

import argparse
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.parse


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--health", required=True, help="https URL that answers 200 when ready")
    p.add_argument("--pid-file", required=True)
    p.add_argument("--log", required=True, help="file for the server's stdout and stderr")
    p.add_argument("--cacert", help="CA certificate to trust (default: no verification)")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds to wait at most")
    p.add_argument("--interval", type=float, default=0.010, help="seconds between polls")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        sys.exit("spawn_wait: no command given")

    url = urllib.parse.urlsplit(a.health)
    if a.cacert:
        ctx = ssl.create_default_context(cafile=a.cacert)
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

    log = open(a.log, "ab")
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    with open(a.pid_file, "w") as f:
        f.write("%d\n" % proc.pid)

    last_error = "no answer yet"
    while True:
        now = time.monotonic()
        if now - start > a.deadline:
            sys.exit("spawn_wait: %s not ready after %.0f s (last: %s)"
                     % (a.health, a.deadline, last_error))
        if proc.poll() is not None:
            sys.exit("spawn_wait: server exited with status %d before %s answered"
                     % (proc.returncode, a.health))
        try:
            conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx, timeout=1.0)
            conn.request("GET", url.path or "/")
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                ready_ms = (time.monotonic() - start) * 1000.0
                print(json.dumps({"pid": proc.pid, "ready_ms": round(ready_ms, 1)}))
                # Leave the server running: the caller owns it from here (see --pid-file).
                os._exit(0)
            last_error = "status %d" % resp.status
        except (OSError, http.client.HTTPException) as e:
            last_error = "%s: %s" % (type(e).__name__, e)
        time.sleep(a.interval)


if __name__ == "__main__":
    main()
