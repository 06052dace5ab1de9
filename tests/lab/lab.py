#!/usr/bin/env python3
"""Multi-host lab for herd's cluster tests, built from Linux network namespaces.

A lab is one "hub" namespace holding a Linux bridge (the switch) and N host
namespaces, each plugged into the switch by a veth pair::

        herdlab<pid>-<seq>-h1        herdlab<pid>-<seq>-h2       ...
        eth0 10.77.K.1/24            eth0 10.77.K.2/24
             |                            |
             p1 ------- br0 (hub) ------- p2                     ...
                 herdlab<pid>-<seq>-hub

Every host has `lo` up, an address on one /24 and a route sending multicast
(224.0.0.0/4) out of eth0. The bridge has multicast snooping off, so multicast
floods to every port like on a dumb switch. Nothing is ever created in the
root (host) namespace: every `ip` command names its namespace with `-n`, the
veth pairs are created inside a host namespace with the peer placed straight
into the hub, and the lab has no route to the outside world. Multicast and
test traffic therefore never leave the machine.

Faults:

* ``partition(*groups)`` splits the hosts into groups. Two mechanisms act
  together, both scoped to the lab's own namespaces:

  1. Switch split (layer 2): each group gets its own bridge in the hub and its
     hosts' ports are moved onto it. Frames cannot cross groups at all:
     unicast, multicast, broadcast, ARP and IPv6 all stay inside a group.
  2. Blackhole routes (layer 3, optional, on by default): every host gets
     ``blackhole <addr>/32`` routes for the hosts outside its group, so a send
     or connect to them fails at once with EINVAL instead of timing out.
     With ``blackhole=False`` only the switch split is applied, so traffic
     across groups is silently lost and peers see timeouts, as in a real
     network partition.

* ``link_down(i)`` sets the switch-side end of host i's veth down: host i sees
  NO-CARRIER and keeps its address and routes, like an unplugged cable.

Use it as a context manager; it also cleans up from ``atexit`` and from
SIGINT/SIGTERM/SIGHUP handlers. A lab killed with SIGKILL leaves namespaces
behind: ``python3 tests/lab/lab.py cleanup`` removes them.

Standard library only; needs root and iproute2 (`ip`, `bridge`).
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import ctypes.util
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Iterable, Sequence

__all__ = [
    "Checks", "Lab", "LabError", "PREFIX", "check_environment", "cleanup_stale", "connect_in_netns",
    "in_netns", "list_lab_namespaces",
]

# Every namespace a lab creates starts with this, so stale ones can be found.
PREFIX = "herdlab"
HOST_IF = "eth0"  # the host's side of its veth
SWITCH = "br0"  # the hub bridge every port sits on when the lab is whole
MULTICAST_NET = "224.0.0.0/4"
MAX_HOSTS = 250  # addresses .1-.250 of the lab's /24
# Default seconds a started process gets between SIGTERM and SIGKILL on close()
# (per lab: Lab.kill_grace).
KILL_GRACE = 1.0
# Signals that tear the lab down before the process goes away.
_CLEANUP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_NAME_RE = re.compile(r"^[A-Za-z0-9_.]{1,32}$")


class LabError(RuntimeError):
    """The lab cannot be built or driven (not root, no iproute2, a failed `ip` command...)."""


# --------------------------------------------------------------------------- talking into a host

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
CLONE_NEWNET = 0x40000000


def _netns_path(ns: str) -> str:
    for d in ("/run/netns", "/var/run/netns"):
        p = os.path.join(d, ns)
        if os.path.exists(p):
            return p
    raise LabError("no namespace file for %s" % ns)


class in_netns:
    """Moves the calling thread into network namespace `ns` (a name as `Lab.ns(i)` gives) for
    the duration of the block.

    A socket belongs to the namespace it was created in for its whole life, so a socket created
    (and connected) in the block keeps talking inside the lab after the thread has moved back;
    other threads are not affected. If the thread cannot move back, the process exits at once
    rather than carry on in the lab's network.
    """

    def __init__(self, ns: str):
        self.ns = ns
        self.own = -1

    def __enter__(self) -> None:
        self.own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(_netns_path(self.ns), os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(self.own)
            raise
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                os.close(self.own)
                raise OSError(e, "setns into %s: %s" % (self.ns, os.strerror(e)))
        finally:
            os.close(target)

    def __exit__(self, *exc) -> None:
        try:
            if _libc.setns(self.own, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                sys.stderr.write("fatal: cannot return from %s: %s\n" % (self.ns, os.strerror(e)))
                os._exit(2)
        finally:
            os.close(self.own)


def connect_in_netns(ns: str, address, timeout=None, source_address=None, **_kw) -> socket.socket:
    """socket.create_connection(address) made from inside network namespace `ns` (usable as an
    http.client connection's `_create_connection`)."""
    with in_netns(ns):
        return socket.create_connection(address, timeout)


class Checks:
    """The tally of a lab test: one `ok`/`FAIL` line per check."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed: list[str] = []

    def check(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.passed += 1
            print("ok    %s" % what, flush=True)
        else:
            self.failed.append(what)
            print("FAIL  %s%s" % (what, (": " + detail) if detail else ""), flush=True)
        return ok


# --------------------------------------------------------------------------- helpers


_env_checked = False


def check_environment() -> None:
    """Raise LabError with a clear message if this process cannot build labs."""
    global _env_checked
    if _env_checked:
        return
    if not sys.platform.startswith("linux"):
        raise LabError("the lab needs Linux network namespaces (this is %s)" % sys.platform)
    if os.geteuid() != 0:
        raise LabError(
            "must run as root: network namespaces, veths and bridges need "
            "CAP_SYS_ADMIN and CAP_NET_ADMIN"
        )
    missing = [tool for tool in ("ip", "bridge") if shutil.which(tool) is None]
    if missing:
        raise LabError(
            "iproute2 is not installed (%s not found on PATH); "
            "install it with: apt-get install -y iproute2" % ", ".join(repr(m) for m in missing)
        )
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise LabError("`ip netns` is unavailable: %s" % (probe.stderr.strip() or "exit %d" % probe.returncode))
    _env_checked = True


def _run_quiet(argv: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess:
    """Run one short administrative command with SIGINT/SIGTERM/SIGHUP held back.

    Holding the signals (the child inherits the mask) means a Ctrl-C or kill
    never lands while an `ip netns add` or `ip link add` is half-way: the
    pending signal is delivered as soon as the command has finished, and the
    cleanup handler then sees a consistent picture of what exists.
    """
    blocking = threading.current_thread() is threading.main_thread()
    if blocking:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _CLEANUP_SIGNALS)
    try:
        return subprocess.run(list(argv), input=input, capture_output=True, text=True)
    finally:
        if blocking:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _cmd(argv: Sequence[str], input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run an iproute2 command; raise LabError with its stderr if it fails and check is set."""
    result = _run_quiet(argv, input)
    if check and result.returncode != 0:
        detail = "; ".join(l.strip() for l in (result.stderr or result.stdout).splitlines() if l.strip())
        detail = detail or "exit status %d" % result.returncode
        shown = " ".join(argv)
        if input:
            shown += " <<< " + "; ".join(line for line in input.splitlines() if line)
        raise LabError("`%s` failed: %s" % (shown, detail))
    return result


def _batch(tool: str, ns: str, lines: Iterable[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run several `ip`/`bridge` commands inside namespace ns in one process (-batch)."""
    text = "".join(line + "\n" for line in lines)
    if not text:
        return subprocess.CompletedProcess([tool], 0, "", "")
    argv = [tool, "-n", ns, "-batch", "-"]
    if not check:
        argv.insert(1, "-force")  # keep going past failing lines
    return _cmd(argv, input=text, check=check)


def _check_prefix(prefix: str) -> str:
    # Never let a typo (or an empty string) select namespaces that are not labs.
    if not prefix.startswith(PREFIX):
        raise LabError("prefix must start with %r, got %r" % (PREFIX, prefix))
    return prefix


def list_lab_namespaces(prefix: str = PREFIX) -> list[str]:
    """Names of existing network namespaces starting with prefix (which must start with 'herdlab')."""
    _check_prefix(prefix)
    out = _cmd(["ip", "netns", "list"]).stdout
    # Lines look like "name" or "name (id: 3)".
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(n for n in names if n.startswith(prefix))


def _pids_in(ns: str) -> list[int]:
    result = _cmd(["ip", "netns", "pids", ns], check=False)
    return [int(tok) for tok in result.stdout.split() if tok.isdigit()]


def _has_exited(proc: subprocess.Popen) -> bool:
    """True once proc is dead, even if it cannot be reaped here.

    Popen.poll() answers None while another frame holds the Popen's waitpid
    lock, which is the case when a signal handler interrupts code blocked in
    proc.wait(). /proc tells the truth: a zombie (Z) or a vanished pid is dead.
    """
    if proc.poll() is not None:
        return True
    try:
        with open("/proc/%d/stat" % proc.pid) as f:
            # "pid (comm) state ...": comm may contain spaces, so split after ")".
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _kill_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _delete_namespace(ns: str) -> bool:
    """Kill whatever still runs in ns, then delete it. Returns True if it existed."""
    # A process left inside would keep the namespace (and its interfaces) alive
    # after the name is gone, so nothing may survive. These are lab processes
    # that already had their SIGTERM (or a stale lab's leftovers): SIGKILL.
    for _ in range(50):
        pids = _pids_in(ns)
        if not pids:
            break
        _kill_pids(pids, signal.SIGKILL)
        time.sleep(0.01)
    result = _cmd(["ip", "netns", "delete", ns], check=False)
    if result.returncode == 0:
        return True
    if "No such file" in result.stderr or "not found" in result.stderr:
        return False
    raise LabError("`ip netns delete %s` failed: %s" % (ns, result.stderr.strip()))


def cleanup_stale(prefix: str = PREFIX, log=None) -> list[str]:
    """Delete every namespace whose name starts with prefix; return their names.

    Processes still running inside them are killed first. Host namespaces are
    removed before hub namespaces (the order does not matter for correctness:
    deleting either end of a veth deletes the pair).
    """
    check_environment()
    removed = []
    names = list_lab_namespaces(prefix)  # validates the prefix
    for ns in sorted(names, key=lambda n: n.endswith("-hub")):
        pids = _pids_in(ns)
        if pids and log:
            log("killing %d process(es) in %s: %s" % (len(pids), ns, " ".join(map(str, pids))))
        if _delete_namespace(ns):
            removed.append(ns)
            if log:
                log("removed %s" % ns)
    return removed


# ------------------------------------------------------------ process-wide cleanup

# Labs that are open in this process; closed by atexit and by the signal handlers.
_open_labs: list["Lab"] = []
_lab_seq = itertools.count()
_atexit_installed = False
_signals_installed = False
_previous_handlers: dict[int, object] = {}


def _close_all_labs() -> None:
    for lab in list(_open_labs):
        try:
            lab.close()
        except Exception as exc:  # keep going: the others must still be cleaned
            print("lab: cleanup of %s failed: %s" % (lab.prefix, exc), file=sys.stderr)


def _on_signal(signum: int, frame) -> None:
    """Tear every open lab down, then let the signal do what it would have done."""
    _close_all_labs()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)  # e.g. Python's SIGINT handler raises KeyboardInterrupt
    elif previous == signal.SIG_DFL:
        # Die of the same signal so the parent sees the real cause.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    """Register atexit and signal cleanup once per process."""
    global _atexit_installed, _signals_installed
    if not _atexit_installed:
        atexit.register(_close_all_labs)
        _atexit_installed = True
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return  # handlers can only be set from the main thread; atexit covers us meanwhile
    _signals_installed = True
    for sig in _CLEANUP_SIGNALS:
        previous = signal.getsignal(sig)
        # Respect a signal the program ignores on purpose, and leave handlers
        # installed from C (getsignal() -> None) alone.
        if previous is None or previous == signal.SIG_IGN:
            continue
        _previous_handlers[sig] = previous
        signal.signal(sig, _on_signal)


# ----------------------------------------------------------------------------- Lab


class Lab:
    """N hosts on one virtual switch, each in its own network namespace.

    Hosts are numbered 1..n. Example::

        with Lab(3) as lab:
            server = lab.popen(1, ["herd", "serve", "--listen", lab.addr(1) + ":7000"])
            lab.run(2, ["herd", "get", "--server", lab.addr(1) + ":7000", "k"], check=True)
            lab.partition([1], [2, 3])
            ...
            lab.heal()
    """

    def __init__(self, n_hosts: int, name: str | None = None):
        if not isinstance(n_hosts, int) or not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError("n_hosts must be an integer in 1..%d, got %r" % (MAX_HOSTS, n_hosts))
        if name is not None and not _NAME_RE.match(name):
            raise ValueError("lab name must match %s, got %r" % (_NAME_RE.pattern, name))
        check_environment()

        seq = next(_lab_seq)
        self.n = n_hosts
        # herdlab<pid>-<seq>- keeps parallel labs (and several labs in one
        # process) apart; a caller-chosen name replaces <pid>-<seq>.
        self.prefix = "%s%s-" % (PREFIX, name if name is not None else "%d-%d" % (os.getpid(), seq))
        # Namespaces isolate the addresses anyway; deriving the third octet
        # from the pid just makes it easy to tell labs apart in captures.
        self.subnet_octet = (os.getpid() + seq) % 256
        self.subnet = "10.77.%d.0/24" % self.subnet_octet
        self.hub = self.prefix + "hub"

        self._namespaces: list[str] = []  # created (or being created), in order
        self._procs: list[subprocess.Popen] = []
        self._groups: list[list[int]] | None = None  # current partition, None when whole
        self._blackholes: dict[int, list[str]] = {}  # host -> blackholed addresses
        self._down: set[int] = set()
        self._closed = False
        # Seconds a started process gets between SIGTERM and SIGKILL on close().
        self.kill_grace = KILL_GRACE

        # Exact names, not the prefix: a caller-chosen name like "1234" would
        # otherwise match another process's automatic "herdlab1234-0-*".
        wanted = {self.hub} | {self.ns(i) for i in self.hosts}
        stale = sorted(wanted.intersection(list_lab_namespaces()))
        if stale:
            raise LabError(
                "namespaces %s already exist (a stale lab? run: python3 %s cleanup)"
                % (", ".join(stale), os.path.abspath(__file__))
            )

        _install_hooks()
        _open_labs.append(self)  # before creating anything, so a signal cleans it up
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ building

    def _add_namespace(self, ns: str) -> None:
        self._namespaces.append(ns)  # recorded first: close() tolerates a missing namespace
        try:
            _cmd(["ip", "netns", "add", ns])
        except LabError:
            # Not ours (e.g. created by someone else since the stale check):
            # close() must not delete it.
            self._namespaces.remove(ns)
            raise

    def _build(self) -> None:
        self._add_namespace(self.hub)
        _batch("ip", self.hub, [
            "link set lo up",
            "link add %s type bridge mcast_snooping 0" % SWITCH,
            "link set %s up" % SWITCH,
        ])
        for i in self.hosts:
            ns = self.ns(i)
            self._add_namespace(ns)
            # The pair is created inside the host namespace with its peer put
            # straight into the hub: neither end ever exists in the root namespace.
            _batch("ip", ns, [
                "link set lo up",
                "link add %s type veth peer name %s netns %s" % (HOST_IF, self._port(i), self.hub),
                "addr add %s/24 dev %s" % (self.addr(i), HOST_IF),
                "link set %s up" % HOST_IF,
                "route add %s dev %s" % (MULTICAST_NET, HOST_IF),
            ])
        _batch("ip", self.hub, [line for i in self.hosts for line in (
            "link set %s master %s" % (self._port(i), SWITCH),
            "link set %s up" % self._port(i),
        )])

    # ------------------------------------------------------------------ naming

    @property
    def hosts(self) -> range:
        """Host numbers, 1..n."""
        return range(1, self.n + 1)

    def _check_host(self, i: int) -> int:
        if not isinstance(i, int) or isinstance(i, bool) or not 1 <= i <= self.n:
            raise ValueError("no host %r in a lab of %d host(s) (hosts are 1..%d)" % (i, self.n, self.n))
        return i

    def addr(self, i: int) -> str:
        """Host i's IPv4 address, e.g. '10.77.42.1'."""
        return "10.77.%d.%d" % (self.subnet_octet, self._check_host(i))

    def ns(self, i: int) -> str:
        """Name of host i's network namespace."""
        return "%sh%d" % (self.prefix, self._check_host(i))

    def _port(self, i: int) -> str:
        """Name of host i's switch port (the veth end in the hub)."""
        return "p%d" % i

    def __repr__(self) -> str:
        state = "closed" if self._closed else "%d hosts on %s" % (self.n, self.subnet)
        return "<Lab %s %s>" % (self.prefix, state)

    # ------------------------------------------------------------------ processes

    def _netns_argv(self, i: int, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a list of arguments, not a string (use ['sh', '-c', ...] for a shell)")
        if self._closed:
            raise LabError("lab %s is closed" % self.prefix)
        return ["ip", "netns", "exec", self.ns(i), *[os.fspath(a) for a in argv]]

    def run(self, i: int, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """subprocess.run(argv, **kw) inside host i's namespace."""
        return subprocess.run(self._netns_argv(i, argv), **kw)

    def popen(self, i: int, argv: Sequence[str], **kw) -> subprocess.Popen:
        """subprocess.Popen(argv, **kw) inside host i's namespace.

        The process gets its own session (process group) unless the caller
        says otherwise, so close() can kill it together with its children.
        `ip netns exec` execs argv directly, so Popen.pid is argv's own pid.
        """
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self._netns_argv(i, argv), **kw)
        self._procs.append(proc)
        return proc

    def _stop_processes(self) -> None:
        """SIGTERM every started process still running, SIGKILL after KILL_GRACE, reap."""
        procs = [p for p in self._procs if p.poll() is None]

        def signal_all(sig: int) -> None:
            for p in procs:
                try:
                    # Its own process group when started with start_new_session.
                    if os.getpgid(p.pid) == p.pid:
                        os.killpg(p.pid, sig)
                    else:
                        p.send_signal(sig)
                except (ProcessLookupError, PermissionError):
                    pass

        if procs:
            signal_all(signal.SIGTERM)
            deadline = time.monotonic() + self.kill_grace
            while time.monotonic() < deadline and not all(_has_exited(p) for p in procs):
                time.sleep(0.01)
            signal_all(signal.SIGKILL)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not all(_has_exited(p) for p in procs):
                time.sleep(0.01)
        for p in self._procs:
            # Reap what can be reaped here; a process whose Popen is being
            # waited on by the code a signal interrupted is reaped by that code.
            p.poll()
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except Exception:
                        pass

    # ------------------------------------------------------------------ faults

    def partition(self, *groups: Iterable[int], blackhole: bool = True) -> None:
        """Split the hosts into groups that cannot reach each other.

        partition([1], [2, 3]): host 1 is cut off from 2 and 3 (both
        directions); 2 and 3 still reach each other. Hosts not named in any
        group form one more group together, so partition([1]) is the same as
        partition([1], [2, 3]) in a lab of 3. A new partition replaces the
        previous one.

        Each group gets its own bridge in the hub (nothing crosses groups at
        layer 2: unicast, multicast, broadcast, ARP and IPv6 alike). With
        blackhole=True (the default) every host also gets blackhole /32 routes
        to the hosts outside its group, so connects and sends to them fail at
        once (EINVAL) instead of timing out; with blackhole=False traffic is
        silently lost, as in a real network partition.
        """
        normalized: list[list[int]] = []
        seen: set[int] = set()
        for group in groups:
            members = [self._check_host(h) for h in group]
            if not members:
                raise ValueError("partition groups must not be empty")
            dup = seen.intersection(members) or {h for h in members if members.count(h) > 1}
            if dup:
                raise ValueError("host(s) %s appear in more than one group" % sorted(dup))
            seen.update(members)
            normalized.append(sorted(members))
        rest = [h for h in self.hosts if h not in seen]
        if rest:
            normalized.append(rest)

        self.heal()
        if len(normalized) <= 1:
            return  # one group is the whole lab: nothing to cut

        # Layer 2: group 0 stays on br0, group g moves to bridge br<g>.
        lines = []
        for g, members in enumerate(normalized):
            bridge = self._bridge(g)
            if g:
                lines += ["link add %s type bridge mcast_snooping 0" % bridge, "link set %s up" % bridge]
            lines += ["link set %s master %s" % (self._port(h), bridge) for h in members]
        self._groups = normalized  # recorded first, so heal() undoes a half-applied partition
        _batch("ip", self.hub, lines)

        # Layer 3: blackhole routes to every host outside one's own group.
        if blackhole:
            for members in normalized:
                others = [self.addr(h) for h in self.hosts if h not in members]
                for h in members:
                    self._blackholes[h] = others
                    _batch("ip", self.ns(h), ["route add blackhole %s/32" % a for a in others])

    def heal(self) -> None:
        """Undo the current partition (if any): every host reaches every other again.

        Links cut with link_down() stay down; use link_up() for those.
        """
        for h, addrs in sorted(self._blackholes.items()):
            # -force: tolerate routes already gone (e.g. a half-applied partition).
            _batch("ip", self.ns(h), ["route del blackhole %s/32" % a for a in addrs], check=False)
        self._blackholes.clear()
        if self._groups is not None:
            lines = ["link set %s master %s" % (self._port(h), SWITCH) for h in self.hosts]
            lines += ["link del %s" % self._bridge(g) for g in range(1, len(self._groups))]
            _batch("ip", self.hub, lines, check=False)
            self._groups = None
            self._verify_whole()

    def _verify_whole(self) -> None:
        """Check that every port is back on br0 (heal() runs its batch with -force)."""
        out = _cmd(["ip", "-n", self.hub, "-o", "link", "show", "master", SWITCH]).stdout
        on_switch = set(re.findall(r"^\d+: (p\d+)[@:]", out, re.M))
        missing = [self._port(h) for h in self.hosts if self._port(h) not in on_switch]
        if missing:
            raise LabError("heal failed: ports %s are not on %s in %s" % (missing, SWITCH, self.hub))

    def _bridge(self, g: int) -> str:
        return "br%d" % g

    @property
    def groups(self) -> list[list[int]] | None:
        """The current partition as a list of host groups, or None when the lab is whole."""
        return None if self._groups is None else [list(g) for g in self._groups]

    @property
    def links_down(self) -> list[int]:
        """Hosts currently cut off by link_down()."""
        return sorted(self._down)

    def link_down(self, i: int) -> None:
        """Cut host i off completely: its switch port goes down (host sees NO-CARRIER)."""
        _cmd(["ip", "-n", self.hub, "link", "set", self._port(self._check_host(i)), "down"])
        self._down.add(i)

    def link_up(self, i: int) -> None:
        """Plug host i back in after link_down(i)."""
        _cmd(["ip", "-n", self.hub, "link", "set", self._port(self._check_host(i)), "up"])
        self._down.discard(i)

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Kill the processes this lab started and delete all its namespaces.

        Idempotent. Safe to call again if interrupted part-way (each step
        tolerates work already done), which is what the signal handler does.
        """
        if self._closed:
            return
        self._stop_processes()
        errors = []
        # Hosts first, hub last; deleting the hub alone would already destroy
        # every veth pair, since deleting one end deletes the other.
        for ns in reversed(self._namespaces):
            try:
                _delete_namespace(ns)
            except LabError as exc:
                errors.append(str(exc))
        self._closed = True
        if self in _open_labs:
            _open_labs.remove(self)
        if errors:
            raise LabError("closing %s: %s" % (self.prefix, "; ".join(errors)))

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- CLI


def _cmd_cleanup(args) -> int:
    removed = cleanup_stale(args.prefix, log=print)
    if not removed:
        print("no namespaces starting with %r" % args.prefix)
    return 0


def _cmd_list(args) -> int:
    names = list_lab_namespaces(args.prefix)
    for ns in names:
        print(ns)
    return 0


def _cmd_shell(args) -> int:
    with Lab(args.n, name=args.name) as lab:
        print("lab %s: %d host(s) on %s, switch %s in namespace %s"
              % (lab.prefix, lab.n, lab.subnet, SWITCH, lab.hub))
        print()
        print("  %-5s %-*s %s" % ("host", len(lab.ns(lab.n)), "namespace", "address"))
        for i in lab.hosts:
            print("  %-5d %-*s %s  (%s)" % (i, len(lab.ns(lab.n)), lab.ns(i), lab.addr(i), HOST_IF))
        print()
        print("enter a host with:  ip netns exec %s bash" % lab.ns(1))
        print("press Ctrl-C to tear the lab down", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    print("\nlab %s removed" % lab.prefix)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lab.py",
        description="Multi-host network-namespace lab for herd's cluster tests. "
        "Builds N hosts (namespaces %s<id>-h1..hN) on one virtual switch (a bridge in "
        "namespace %s<id>-hub), on a private 10.77.K.0/24 with multicast routed to the switch. "
        "Nothing is created in the root network namespace. Needs root and iproute2." % (PREFIX, PREFIX),
        epilog="From Python: `from lab import Lab; with Lab(3) as lab: ...` (see tests/lab/README.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("cleanup", help="remove every lab namespace (stale labs), killing what runs in them",
                       description="Delete every network namespace whose name starts with the prefix "
                       "(default %r), killing the processes inside first, and print what was removed. "
                       "Note: this also removes labs of test runs still in progress." % PREFIX)
    p.add_argument("--prefix", default=PREFIX, help="namespace name prefix (default: %(default)s)")
    p.set_defaults(func=_cmd_cleanup)

    p = sub.add_parser("list", help="print the lab namespaces that exist now",
                       description="Print every network namespace whose name starts with the prefix.")
    p.add_argument("--prefix", default=PREFIX, help="namespace name prefix (default: %(default)s)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("shell", help="build a lab of N hosts, print it and wait for Ctrl-C",
                       description="Build a lab of N hosts, print each host's namespace and address, "
                       "and keep it until Ctrl-C (or SIGTERM), then remove it. Meant for humans: "
                       "open other terminals and use `ip netns exec <namespace> <command>`.")
    p.add_argument("n", type=int, metavar="N", help="number of hosts (1..%d)" % MAX_HOSTS)
    p.add_argument("--name", help="use namespaces %s<NAME>-* instead of %s<pid>-<seq>-*" % (PREFIX, PREFIX))
    p.set_defaults(func=_cmd_shell)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (LabError, ValueError) as exc:
        print("lab.py: error: %s" % exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
