"""Network namespaces joined to this one by veth pairs: the "hosts" of the multi-host tests.

A ``Network`` of N hosts is named ``ezp-<pid>-*`` and lives in 10.213.S.0/24, a block
of private addresses that no other interface or route on the machine touches::

    root namespace: the client, the name server           host n: namespace ezp-<pid>-<n>
    ────────────────────────────────────────────────       ────────────────────────────────
    ezp-<pid>-s    10.213.S.1/32  the service address
                   10.213.S.0/24  routed here: the rest of the block goes nowhere
    ezp-<pid>-<n>r 10.213.S.4n+1/30  ◀──── veth pair ────▶  eth0 10.213.S.4n+2/30, lo up
                                                              10.213.S.1 via 10.213.S.4n+1

``ezp-<pid>-s`` is one end of a veth pair whose other end, ``ezp-<pid>-t``, is also
here (a stand-in for a dummy interface, whose module is not always loaded). It
answers no ARP, so what is routed to it is silently dropped. A host has no default
route and reaches only its own /30 and the service address: no packet of these
tests leaves the machine.

``Host.cut()`` sets the root end of a host's veth down. Its /30 route goes with it,
so packets for the host fall to the /24 and vanish, and the host's own packets find
no carrier: both sides see silence, as when a cable is pulled somewhere between two
machines, not an error. ``Host.restore()`` sets it up again, and the kernel puts the
route back.

Everything a ``Network`` made (namespaces, links, routes, and the processes started
in its hosts) is removed by ``Network.close()``; ``sweep()`` removes what a test
session that died left behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Optional

__all__ = ["PREFIX", "IpError", "Host", "Network", "unavailable", "sweep"]

#: Every namespace and link of these tests is named ``PREFIX<pid>-...``.
PREFIX = "ezp-"
#: The /16 the blocks are taken from; a session uses one /24 of it.
BLOCK = ipaddress.ip_network("10.213.0.0/16")
#: Hosts a /24 holds: one /30 each, after the service address's.
MAX_HOSTS = 63

_OWNED = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


class IpError(RuntimeError):
    """An ``ip`` command failed."""


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its output, or ``IpError`` with its message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode:
        raise IpError(f"ip {' '.join(args)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout


def unavailable() -> Optional[str]:
    """Why namespaces cannot be built here, or ``None`` when they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs the tests as root)"
    if shutil.which("ip") is None:
        return "`ip` is missing (install iproute2)"
    probe = f"{PREFIX}{os.getpid()}-0"
    try:
        ip("netns", "add", probe)
    except IpError as exc:
        return f"`ip netns add` fails here: {exc}"
    try:
        ip("link", "add", f"{probe}r", "type", "veth", "peer", "name", "eth0", "netns", probe)
    except IpError as exc:
        return f"cannot make a veth pair here: {exc}"
    finally:
        with contextlib.suppress(IpError):
            ip("link", "del", f"{probe}r")
        with contextlib.suppress(IpError):
            ip("netns", "del", probe)
    return None


def sweep() -> list[str]:
    """Remove the namespaces and links of sessions that are gone; the names removed.

    A name belongs to a session that is gone when its pid is not running (or is
    this process's, which has made nothing yet when it sweeps).
    """
    removed = []
    for namespace in _namespaces():
        if _stale(namespace):
            _kill_inside(namespace)
            with contextlib.suppress(IpError):
                ip("netns", "del", namespace)
                removed.append(namespace)
    for link in _links():
        if _stale(link):
            with contextlib.suppress(IpError):  # one end of a pair may have taken the other with it
                ip("link", "del", link)
                removed.append(link)
    return removed


class Host:
    """One network namespace, joined to the root namespace by a veth pair."""

    def __init__(self, network: Network, namespace: str, link: str, address: str, gateway: str) -> None:
        self.network = network
        self.namespace = namespace
        self.link = link  # the root end of the veth pair
        self.address = address  # the host's address, on its eth0
        self.gateway = gateway  # the root end's address

    def __repr__(self) -> str:
        return f"Host({self.namespace!r}, {self.address})"

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def run(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[str]:
        """Start ``argv`` inside this host, in a session of its own; killed by ``close()``.

        ``ip netns exec`` replaces itself with ``argv``, so the process's pid is the
        command's own. Output is piped and text unless ``popen`` says otherwise.
        """
        options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        options.update(popen)
        process = subprocess.Popen(self.command(argv), start_new_session=True, **options)
        self.network.processes.append(process)
        return process

    def pids(self) -> list[int]:
        """Every process in this host's namespace now (``ip netns pids``), started by us or not."""
        return [int(pid) for pid in ip("netns", "pids", self.namespace).split()]

    def command_lines(self) -> dict[int, str]:
        """The command line of every process in this host now, its arguments joined by spaces."""
        lines = {}
        for pid in self.pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as file:
                lines[pid] = file.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        return lines

    def cut(self) -> None:
        """Cut this host off: from now on, packets either way vanish."""
        ip("link", "set", self.link, "down")

    def restore(self) -> None:
        """Join this host again after ``cut()``."""
        ip("link", "set", self.link, "up")


class Network:
    """``count`` hosts and the service address, made now; ``close()`` removes them all."""

    def __init__(self, count: int) -> None:
        if not 1 <= count <= MAX_HOSTS:
            raise ValueError(f"a network has 1 to {MAX_HOSTS} hosts, not {count}")
        self.name = f"{PREFIX}{os.getpid()}"
        self.hosts: list[Host] = []
        self.processes: list[subprocess.Popen[str]] = []
        self._namespaces: list[str] = []
        self._links: list[str] = []
        try:
            self.block = _free_block()
            self.service_address = str(self.block[1])
            self._add_service_address()
            for n in range(1, count + 1):
                self.hosts.append(self._add_host(n))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _add_service_address(self) -> None:
        stub, peer = f"{self.name}-s", f"{self.name}-t"
        ip("link", "add", stub, "type", "veth", "peer", "name", peer)
        self._links.append(stub)
        ip("link", "set", stub, "arp", "off")
        ip("link", "set", peer, "up")
        ip("link", "set", stub, "up")
        ip("addr", "add", f"{self.service_address}/32", "dev", stub)
        ip("route", "add", str(self.block), "dev", stub)

    def _add_host(self, n: int) -> Host:
        namespace, link = f"{self.name}-{n}", f"{self.name}-{n}r"
        subnet = ipaddress.ip_network(f"{self.block[4 * n]}/30")
        gateway, address = str(subnet[1]), str(subnet[2])
        ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        self._links.append(link)
        ip("addr", "add", f"{gateway}/30", "dev", link)
        ip("link", "set", link, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "addr", "add", f"{address}/30", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "route", "add", f"{self.service_address}/32", "via", gateway)
        return Host(self, namespace, link, address, gateway)

    def close(self) -> None:
        """Kill every process in the hosts, then remove every namespace and link made.

        Goes on past failures and raises the first at the end.
        """
        errors: list[BaseException] = []
        for process in self.processes:
            _stop(process)
        for namespace in self._namespaces:
            _kill_inside(namespace)
        for link in reversed(self._links):  # a veth pair goes with either end
            try:
                ip("link", "del", link)
            except IpError as exc:
                errors.append(exc)
        for namespace in reversed(self._namespaces):
            try:
                ip("netns", "del", namespace)
            except IpError as exc:
                errors.append(exc)
        self.processes, self._links, self._namespaces = [], [], []
        if errors:
            raise errors[0]


def _free_block() -> ipaddress.IPv4Network:
    """A /24 of ``BLOCK`` that no address or narrower route here touches (starting from our pid's)."""
    taken = [ipaddress.ip_interface(word).network for word in _words_after("inet", ip("-4", "-o", "addr"))]
    for line in ip("-4", "route", "show", "table", "all").splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("local", "broadcast", "unreachable", "blackhole", "prohibit", "throw"):
            first = line.split()[1]
        with contextlib.suppress(ValueError):
            network = ipaddress.ip_network(first, strict=False)
            if network.prefixlen >= 24:
                taken.append(network)
    blocks = list(BLOCK.subnets(new_prefix=24))
    start = os.getpid() % len(blocks)
    for block in blocks[start:] + blocks[:start]:
        if not any(block.overlaps(network) for network in taken):
            return block
    raise IpError(f"every /24 of {BLOCK} is in use here")


def _words_after(word: str, text: str) -> list[str]:
    found = []
    for line in text.splitlines():
        words = line.split()
        if word in words[:-1]:
            found.append(words[words.index(word) + 1])
    return found


def _namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def _links() -> list[str]:
    names = []
    for line in ip("-o", "link", "show").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            names.append(parts[1].strip().split("@")[0])
    return names


def _stale(name: str) -> bool:
    match = _OWNED.match(name)
    if match is None:
        return False
    pid = int(match.group(1))
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _kill_inside(namespace: str) -> None:
    """SIGKILL every process still in ``namespace`` (ours are reaped by ``_stop``)."""
    with contextlib.suppress(IpError):
        for pid in ip("netns", "pids", namespace).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
        process.communicate(timeout=10)
