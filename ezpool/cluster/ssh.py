"""``SSH``: workers started on hosts over the system's ``ssh``, dialling back to the pool.

One ``ssh`` per host, run by this machine's own client, so ``~/.ssh/config``, agents
and ``ProxyJump`` apply, and ``ssh_options`` go to every one. The key travels on the
session's standard input, never on a command line or in a file; the worker leaves
when that input ends, so whatever ends the ``ssh`` (the pool closing it, a kill, a
lost link) ends the worker on the host::

    pool (this machine)                        host (sshd runs the command in the user's shell)
    ───────────────────                        ────────────────────────────────────────────────
    ssh [ssh_options] -T -o BatchMode=yes   ─▶  PYTHON -c BOOT --connect ADDRESS --key-stdin [--procs N]
        [-R 0:POOLHOST:POOLPORT]                  reads line 1: the key
        HOST -- <worker command>                  (tunnel: --connect -, reads line 2: 127.0.0.1:N)
    stdin:  key line [, 127.0.0.1:N line]  ───▶   dials ADDRESS, or the tunnel's near end
            ... kept open while the pool runs     works; leaves when its stdin ends
    stdout+stderr: ssh's and the worker's   ◀──   "ezpool-serve: joined the pool at ..."
      last lines kept, for the log when it ends

With a tunnel, ``ssh -R 0:...`` makes the host's sshd listen on a free port of its
loopback, says "Allocated port N" on its standard error, and carries every
connection to that port back to the pool's address: the host needs no route to
this machine, only the ssh connection. ``tunnel=None`` tunnels when the pool listens
on a loopback address, which no other host could reach.
"""

from __future__ import annotations

import collections
import contextlib
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, NamedTuple, Optional

from .._core.logs import get_logger
from ..errors import ClusterError
from ..security import is_loopback_host
from .base import Cluster, Joining, shell_line, worker_command

logger = get_logger(__name__)

__all__ = ["SSH"]

#: What ``ssh -R 0:...`` says once the host's sshd has picked the tunnel's port.
_ALLOCATED = re.compile(r"Allocated port (\d+) for remote forward")
#: What a worker says on its standard error once it has joined its pool.
_JOINED = "joined the pool at"
#: Lines of a session's output kept, for the message when it ends.
_TAIL = 12
#: ``ConnectTimeout`` given to ssh where its configuration sets none (the system's
#: default is the TCP timeout, about two minutes for a host that does not answer).
CONNECT_TIMEOUT = 20
#: How long ``stop`` lets workers leave on their own once their input has ended,
#: then how long it gives ``ssh`` after SIGTERM.
LEAVE_SECONDS = 5.0
TERM_SECONDS = 3.0
#: How long a tunnelling ssh may take to say its port before it counts as failed.
TUNNEL_SECONDS = 60.0


class HostSpec(NamedTuple):
    """One entry of ``SSH(hosts)``: where ssh goes, and how many worker processes run there."""

    destination: str
    procs: int


def parse_host(spec: str) -> HostSpec:
    """``"node"``, ``"user@node"`` or ``"node:4"`` (4 worker processes there); ``ValueError``
    naming ``spec`` when it is none of these."""
    if not isinstance(spec, str):
        raise ValueError(f"an SSH host is a string such as 'node1' or 'node2:4', not {spec!r}")
    destination, colon, count = spec.rpartition(":")
    if not colon:
        destination, count = spec, ""
    elif not count.isdigit() or not 0 < int(count) <= 4096:
        raise ValueError(
            f"SSH host {spec!r}: what follows ':' is the number of worker processes there "
            f"(1 to 4096), as in 'node2:4'; give the ssh port in ssh_config or ssh_options"
        )
    if ":" in destination:
        raise ValueError(
            f"SSH host {spec!r}: only one ':' may follow the host (the number of worker processes); "
            f"name an IPv6 address or an ssh:// URI through a Host of ssh_config"
        )
    unfit = any(c.isspace() or c in "'\"\\" for c in destination)
    if not destination or destination.startswith("-") or unfit:
        raise ValueError(f"SSH host {spec!r} is not a host name ssh could take")
    return HostSpec(destination, int(count) if count else 1)


class SSH(Cluster):
    """Workers on SSH hosts, started with the system's ``ssh``; pass as ``workers=`` of a
    distributed ``Pool``.

    Args:
        hosts: ssh destinations (``"node1"``, ``"user@node2"``, a ``Host`` of your
            ssh config), each optionally ``":N"`` for N worker processes there
            (``"node2:4"``); a host listed twice gets two sessions.
        python: the interpreter to run on the hosts; by default this one's path
            (``sys.executable``), right where the hosts share this machine's
            software. Name another where they do not: ``python="/opt/env/bin/python"``.
        ssh_options: passed to every ``ssh`` before the host (``["-F", "my_config"]``,
            ``["-J", "gateway"]``, ``["-o", "ConnectTimeout=5"]``).
        serve_args: more ``ezpool-serve`` flags for every worker (``["--grace", "30"]``).
        tunnel: carry the workers' connections back over each ssh connection
            (``ssh -R``), for hosts that cannot reach the pool's address. ``None``
            (default): only when the pool listens on a loopback address.
        ssh: the ssh client to run.
    """

    def __init__(
        self,
        hosts: Sequence[str],
        python: str = sys.executable,
        ssh_options: Sequence[str] = (),
        serve_args: Sequence[str] = (),
        tunnel: Optional[bool] = None,
        ssh: str = "ssh",
    ) -> None:
        if isinstance(hosts, str):
            raise ValueError(f"hosts is a list of ssh hosts: SSH([{hosts!r}]), not SSH({hosts!r})")
        self.hosts = [parse_host(spec) for spec in hosts]
        if not self.hosts:
            raise ValueError("SSH needs at least one host, as in SSH(['node1', 'node2:4'])")
        if isinstance(ssh_options, str) or isinstance(serve_args, str):
            raise ValueError("ssh_options and serve_args are lists of arguments, as in ['-F', 'my_config']")
        if tunnel not in (None, True, False):
            raise ValueError(f"tunnel is True, False or None (tunnel to a loopback pool), not {tunnel!r}")
        self.python = python
        self.ssh_options = list(ssh_options)
        self.serve_args = list(serve_args)
        self.tunnel = tunnel
        self.ssh = ssh
        self._sessions: list[_Session] = []
        self._stopped = False

    def __repr__(self) -> str:
        hosts = [h.destination if h.procs == 1 else f"{h.destination}:{h.procs}" for h in self.hosts]
        return f"SSH({hosts!r})"

    @property
    def expected(self) -> int:
        return sum(host.procs for host in self.hosts)

    def commands(self, joining: Joining) -> list[list[str]]:
        """The ``ssh`` command line of every host, as ``start`` runs them (no key is in any)."""
        tunnel = self._tunnels(joining)
        return [self._command(host, joining, tunnel, self._defaults(host)) for host in self.hosts]

    def start(self, joining: Joining) -> None:
        if self._sessions:
            raise ClusterError(f"{self!r} has started already: a cluster serves one pool")
        key_line = _key_line(joining)
        tunnel = self._tunnels(joining)
        argvs = [self._command(host, joining, tunnel, self._defaults(host)) for host in self.hosts]
        for host, argv in zip(self.hosts, argvs):
            logger.debug("ssh to %s: %s", host.destination, shell_line(argv))
            try:
                session = _Session(host.destination, argv, key_line, tunnel)
            except OSError as exc:
                self.stop()
                raise ClusterError(f"cannot run {self.ssh!r} for host {host.destination}: {exc}") from exc
            self._sessions.append(session)

    def check(self) -> None:
        for session in self._sessions:
            session.look()
        if self._sessions and not self._stopped and all(s.ended for s in self._sessions):
            said = "; ".join(f"{s.destination}: {s.problem()}" for s in self._sessions)
            raise ClusterError(f"no worker could start over ssh on any host: {said}")

    def stop(self) -> None:
        self._stopped = True
        sessions = self._sessions
        for session in sessions:
            session.stopping = True
            session.close_input()
        deadline = time.monotonic() + LEAVE_SECONDS
        for session in sessions:
            if session.joined:  # one that never joined holds no work: ending its ssh loses nothing
                session.wait(deadline - time.monotonic())
        for session in sessions:
            session.terminate()
        deadline = time.monotonic() + TERM_SECONDS
        for session in sessions:
            session.wait(deadline - time.monotonic())
        for session in sessions:
            session.kill()

    # --- the command lines ---

    def _tunnels(self, joining: Joining) -> Optional[str]:
        """The ``-R`` target (``POOLHOST:PORT``) when workers come over a tunnel, else ``None``."""
        host, port = _split_address(joining.address)
        tunnel = is_loopback_host(host) if self.tunnel is None else self.tunnel
        if not tunnel:
            return None
        if joining.insecure:
            raise ClusterError(
                "SSH(tunnel=...) tells each worker its tunnel's port on standard input after the key, "
                "so it needs a key: drop insecure=True, or give tunnel=False and an address the hosts reach"
            )
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _defaults(self, host: HostSpec) -> list[str]:
        """``-o`` options for what the user's ssh configuration leaves at a bad default;
        ``ClusterError`` when ssh refuses the options or the host (``ssh -G``, no network)."""
        argv = [self.ssh, *self.ssh_options, "-G", host.destination]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"cannot run {self.ssh!r} for host {host.destination}: {exc}") from exc
        if done.returncode:
            said = " ".join(done.stderr.split()) or f"exit {done.returncode}"
            raise ClusterError(f"ssh refuses host {host.destination!r} with {self.ssh_options}: {said}")
        settings = dict(line.partition(" ")[::2] for line in done.stdout.splitlines())
        if settings.get("connecttimeout", "none") == "none":
            return ["-o", f"ConnectTimeout={CONNECT_TIMEOUT}"]
        return []

    def _command(
        self, host: HostSpec, joining: Joining, tunnel: Optional[str], defaults: list[str]
    ) -> list[str]:
        argv = [self.ssh, *self.ssh_options, "-T", "-o", "BatchMode=yes", *defaults]
        if tunnel:
            argv += ["-o", "ExitOnForwardFailure=yes", "-R", f"0:{tunnel}"]
        worker = worker_command(
            joining, self.python, host.procs, key_on_stdin=True, serve_args=self.serve_args,
            connect_to="-" if tunnel else joining.address,
        )
        return [*argv, host.destination, "--", shell_line(worker)]


class _Session:
    """One ``ssh`` to one host: its process, what it last said, and the tunnel's port.

    It says once, as soon as it knows (its reader sees ssh's output end, or ``check``
    looks), that its ssh ended other than by ``stop``, naming the host and ssh's last
    lines; an exit status of 0 is a worker that left because its pool closed."""

    def __init__(self, destination: str, argv: list[str], key_line: bytes, tunnel: Optional[str]) -> None:
        self.destination = destination
        self.tunnel = tunnel
        self.stopping = False
        self.ended = False
        self.port: Optional[int] = None
        self.joined = False
        self.started = time.monotonic()
        self._tail: collections.deque[str] = collections.deque(maxlen=_TAIL)
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the pool, which stops the sessions itself
        )
        self._write(key_line)
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name=f"ezpool-ssh-{destination}", daemon=True
        )
        self._reader.start()

    def _read(self, stream: Optional[IO[bytes]]) -> None:
        assert stream is not None
        with stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip()
                if not line:
                    continue
                with self._lock:
                    self._tail.append(line)
                logger.debug("ssh host %s: %s", self.destination, line)
                found = _ALLOCATED.search(line)
                if found and self.tunnel and self.port is None:
                    self.port = int(found.group(1))
                    self._write(f"127.0.0.1:{self.port}\n".encode("ascii"))
                elif _JOINED in line:
                    self.joined = True
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(TERM_SECONDS)
        self.look()

    def _write(self, data: bytes) -> None:
        stdin = self.process.stdin
        if not data or stdin is None:
            return
        try:
            with self._lock:
                if not stdin.closed:
                    stdin.write(data)
                    stdin.flush()
        except (BrokenPipeError, OSError, ValueError):  # ssh has gone: look() says why
            pass

    def look(self) -> None:
        """Note (and say, once) that this session has ended, if it has."""
        problem = self.problem()
        if problem is None:
            return
        with self._lock:
            if self.ended:
                return
            self.ended = True
        if self.stopping or self.process.returncode == 0:
            logger.debug("ssh host %s: %s", self.destination, problem)
        else:
            logger.error("ssh host %s: %s", self.destination, problem)

    def problem(self) -> Optional[str]:
        """What ended this session (``None``: it goes on)."""
        code = self.process.poll()
        if code is None:
            if self.tunnel and self.port is None and time.monotonic() - self.started > TUNNEL_SECONDS:
                self.terminate()
                return (
                    f"ssh gave no tunnel port in {TUNNEL_SECONDS:.0f} s (a LogLevel of QUIET or ERROR hides "
                    f"its 'Allocated port' line){self._said()}"
                )
            return None
        return f"ssh ended (exit {code}){self._hint(code)}{self._said()}"

    def _said(self) -> str:
        with self._lock:
            lines = list(self._tail)
        return ": " + " | ".join(lines) if lines else ", saying nothing"

    def _hint(self, code: int) -> str:
        with self._lock:
            text = "\n".join(self._tail)
        if "No module named" in text and "ezpool" in text:
            return " (ezpool is not installed for the python run there: pass python=)"
        if code == 127:
            return " (the python to run is not there: pass python=)"
        if code == 255:
            return " (ssh could not connect or log in)"
        return ""

    def close_input(self) -> None:
        stdin = self.process.stdin
        if stdin is not None:
            with self._lock, contextlib.suppress(OSError):
                stdin.close()

    def wait(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(max(timeout, 0.0))

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(TERM_SECONDS)


def _key_line(joining: Joining) -> bytes:
    """The first line a worker reads: the key as in a key file (nothing when insecure)."""
    if joining.insecure:
        return b""
    if joining.key is None:
        raise ClusterError("SSH passes the pool's key to its workers, and this pool gave it none")
    key = joining.key.strip()
    if b"\n" in key or b"\r" in key:
        raise ClusterError("SSH passes the key on one line of standard input; this key holds a line break")
    return key + b"\n"


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"the pool's address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)
