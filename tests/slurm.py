"""A real SLURM for the tests: munged, slurmctld and slurmd of the distribution's packages.

``LocalSlurm()`` starts, as root, a one-node cluster of its own in a fresh directory
(short, under /tmp: munge's socket path must fit in 108 bytes), with no accounting
database, on free ports, so that it touches no SLURM or munge the machine may run::

    /tmp/ezp-slurm-<pid>-XXXX/          mode 0711 (munged wants its socket's folder searchable)
        munge.key munge.sock            munged --key-file --socket: a key of its own
        slurm.conf                      AuthInfo=socket=... points SLURM at that munged
        state/ spool/ log/              StateSaveLocation, SlurmdSpoolDir, the daemons' logs

    munged -F ──▶ slurmctld -D ──▶ slurmd -D -N localhost      (each in a session of its own)

The node, ``localhost`` at 127.0.0.1, declares ``CPUS`` CPUs whatever the machine has
(``SlurmdParameters=config_overrides``), so that several jobs run side by side.
``LocalSlurm(network=hosts.Network(2))`` makes two nodes instead, one per network
namespace, each looking like a machine of its own::

    this namespace: munged, slurmctld at the service address 10.213.S.1, the clients
        ▲ forwarding on the hosts' links only; each host routes 10.213.S.0/24 here
    node1, node2: unshare --uts --mount (host name nodeN, an /etc/hosts naming every node)
                  nsenter --net=<the host's namespace> slurmd -D -N nodeN

``KillWait`` is short, so that a cancelled job is gone within seconds. Clients find
the cluster through ``SLURM_CONF`` (``LocalSlurm.env``, or ``os.environ`` once the
fixture sets it).

Every process of a job (the batch shell, ``srun``'s tasks, the workers they start)
carries ``SLURM_CONF`` and ``SLURM_JOB_ID`` in its environment: ``job_processes()``
finds the ones still alive, which is how the tests see that nothing outlives a job.
``close()`` cancels every job, kills what is left of them and the daemons, and removes
the directory; ``sweep()`` removes what a test session that died left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from tests.hosts import Host, Network, ip

__all__ = ["CPUS", "NODE", "LocalSlurm", "unavailable", "sweep"]

#: The one node's name, and the CPUs it declares.
NODE = "localhost"
CPUS = 8
#: Every directory of these clusters is ``/tmp/PREFIX<pid>-XXXX``.
PREFIX = "ezp-slurm-"
#: What the tests need, from Debian's slurmctld, slurmd, slurm-client and munge.
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "salloc", "squeue", "scancel",
            "sinfo", "scontrol")

def unavailable() -> Optional[str]:
    """Why a SLURM cannot be started here, or ``None`` when it can."""
    if not sys.platform.startswith("linux"):
        return "the test SLURM needs Linux"
    if os.geteuid() != 0:
        return "the test SLURM runs its daemons as root (CI runs the tests as root)"
    missing = [name for name in BINARIES if shutil.which(name, path=_path()) is None]
    if missing:
        return (f"SLURM or munge is not installed ({', '.join(missing)} missing): "
                "apt-get install slurmctld slurmd slurm-client munge")
    return None


def _path() -> str:
    """PATH with the sbin folders, where Debian puts the daemons."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(folders + [f for f in ("/usr/sbin", "/sbin") if f not in folders])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalSlurm:
    """A SLURM, started now and ready (every node idle); ``close()`` removes it all.

    Without ``network``, one node, ``localhost``. With a ``tests.hosts.Network``, one node per
    host (``node1``, ``node2``...), each slurmd in its host's network namespace with a host
    name of its own (``_on_node``); the controller listens at the network's service address,
    and the hosts reach each other through this namespace (``_join_hosts``).
    """

    def __init__(
        self, cpus: int = CPUS, ready_within: float = 60.0, network: Optional[Network] = None
    ) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir="/tmp"))
        self.conf = self.directory / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": _path()}
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.network = network
        #: The nodes, by name: each one's address, and the host it runs in (None: this namespace).
        self.nodes: dict[str, tuple[str, Optional[Host]]] = (
            {f"node{n}": (host.address, host) for n, host in enumerate(network.hosts, 1)} if network
            else {NODE: ("127.0.0.1", None)}
        )
        try:
            self.directory.chmod(0o711)
            for folder in ("state", "spool", "log", *(f"spool/{name}" for name in self.nodes)):
                (self.directory / folder).mkdir(mode=0o700)
            if network:
                _join_hosts(network)
            self._start_munge()
            self._write_conf(cpus)
            self._start("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            for name, (_, host) in self.nodes.items():
                argv = ["slurmd", "-D", "-N", name, "-f", str(self.conf)]
                self._start(f"slurmd-{name}", self._on_node(name, host, argv) if host else argv)
            self._wait_idle(ready_within)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LocalSlurm:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- starting ---

    def _start_munge(self) -> None:
        key = self.directory / "munge.key"
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(1024))
        d = self.directory
        self._start("munged", [
            "munged", "-F", f"--key-file={key}", f"--socket={d / 'munge.sock'}",
            f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'log' / 'munged.log'}",
            f"--seed-file={d / 'munged.seed'}",
        ])
        deadline = time.monotonic() + 20
        while True:
            probe = subprocess.run(["munge", "-n", "-S", str(d / "munge.sock")], capture_output=True,
                                   env=self.env, timeout=10, check=False)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline or self.daemons[-1].poll() is not None:
                raise RuntimeError(f"munged did not start: {probe.stderr.decode().strip()}\n{self.logs()}")
            time.sleep(0.1)

    def _write_conf(self, cpus: int) -> None:
        d = self.directory
        lines = [
            "ClusterName=ezptest",
            f"SlurmctldHost={socket.gethostname()}({self.network.service_address})" if self.network
            else "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={d / 'munge.sock'}",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}/%n",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd'}-%n.pid",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log'}/slurmd-%n.log",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides",
            "MpiDefault=none",
            "ReturnToService=2",
            "KillWait=5",
            "MinJobAge=30",
            "InactiveLimit=0",
            "SchedulerParameters=sched_interval=2",  # a job that could not start at once waits 2 s, not 60
            *(f"NodeName={name} NodeAddr={address} CPUs={cpus} Boards=1 SocketsPerBoard=1 "
              f"CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory=4000 State=UNKNOWN"
              for name, (address, _) in self.nodes.items()),
            f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _on_node(self, name: str, host: Host, argv: list[str]) -> list[str]:
        """``argv`` run as on a machine called ``name``: in ``host``'s network, with a host name of
        its own, which its /etc/hosts (a copy, in a mount namespace of its own) resolves.

        ``nsenter --net``, not ``ip netns exec``, which mounts a /sys of its own without the
        cgroup file system slurmd looks for.
        """
        assert self.network is not None
        names = self.directory / "hosts"
        if not names.exists():
            lines = ["127.0.0.1 localhost", f"{self.network.service_address} {socket.gethostname()}"]
            lines += [f"{address} {node}" for node, (address, _) in self.nodes.items()]
            names.write_text("\n".join(lines) + "\n")
        names.chmod(0o644)
        inside = (f"mount --bind {shlex.quote(str(names))} /etc/hosts && hostname {shlex.quote(name)} && "
                  f"exec nsenter --net=/run/netns/{shlex.quote(host.namespace)} {shlex.join(argv)}")
        return ["unshare", "--uts", "--mount", "sh", "-c", inside]

    def _start(self, name: str, argv: list[str]) -> None:
        with open(self.directory / "log" / f"{name}.out", "wb") as out:
            self.daemons.append(subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            ))

    def _wait_idle(self, within: float) -> None:
        deadline = time.monotonic() + within
        states: list[str] = []
        while time.monotonic() < deadline:
            for daemon in self.daemons:
                if daemon.poll() is not None:
                    raise RuntimeError(f"{daemon.args[0]} exited ({daemon.returncode}):\n{self.logs()}")
            done = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False)
            states = done.stdout.split()
            if states and all(state == "idle" for state in states) and len(states) == len(self.nodes):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the nodes are {states or 'unknown'} after {within} s:\n{self.logs()}")

    # --- using ---

    def run(self, argv: list[str], check: bool = True, timeout: float = 30.0,
            input: Optional[str] = None) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command against this cluster, in this process's environment as it is
        now (a job submitted inherits it); with ``check``, fail on its errors."""
        env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": _path()}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout,
                              input=input, check=False)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def jobs(self) -> dict[str, str]:
        """Every job this cluster still lists (ended ones for ``MinJobAge``), id to state."""
        listed = self.run(["squeue", "-h", "-r", "--states=all", "-o", "%i %T"]).stdout.split("\n")
        return dict(line.split() for line in listed if line.strip())

    def live_jobs(self) -> list[str]:
        """The jobs not ended yet (pending, running, completing, ...)."""
        listed = self.run(["squeue", "-h", "-r", "-o", "%i"]).stdout.split()
        return listed

    def job_processes(self) -> list[tuple[int, str]]:
        """Every process of a job of this cluster still alive, (pid, command line)."""
        mark = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if mark in environ and any(item.startswith(b"SLURM_JOB_ID=") for item in environ):
                found.append((int(entry), command.decode(errors="replace").strip()))
        return found

    def cancel_all(self, within: float = 20.0) -> None:
        """Cancel every job, wait until none is listed as live, and kill what is left of them."""
        with contextlib.suppress(Exception):
            self.run(["scancel", "--user", "root"], check=False)
        deadline = time.monotonic() + within
        with contextlib.suppress(Exception):
            while self.live_jobs() and time.monotonic() < deadline:
                time.sleep(0.2)
        for pid, _ in self.job_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def logs(self, lines: int = 15) -> str:
        """The last lines of each daemon's log, for an error message."""
        parts = []
        for path in sorted((self.directory / "log").glob("*")):
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def close(self) -> None:
        """Cancel every job, stop the daemons (munged last), and remove the directory."""
        if self.daemons and all(d.poll() is None for d in self.daemons[:3]):
            self.cancel_all()
        for daemon in reversed(self.daemons):
            _stop(daemon)
        for pid, _ in self.job_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.daemons = []
        shutil.rmtree(self.directory, ignore_errors=True)


def _join_hosts(network: Network) -> None:
    """Let the hosts reach each other through this namespace: a route to the whole block in
    each, and forwarding on the root ends of their links only (nothing else here forwards)."""
    for host in network.hosts:
        Path(f"/proc/sys/net/ipv4/conf/{host.link}/forwarding").write_text("1\n")
        ip("-n", host.namespace, "route", "add", str(network.block), "via", host.gateway)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the daemon's session, then SIGKILL what has not left within 10 s."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
            return


def sweep() -> list[int]:
    """Kill the daemons and job processes of test SLURMs whose session is gone, and remove their
    folders; the pids killed."""
    owned = re.compile(rf"/{re.escape(PREFIX)}(\d+)-[^/\s]+/")
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            command = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode("latin-1")
            conf = [item for item in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
                    if item.startswith(b"SLURM_CONF=")]
        except OSError:
            continue
        match = owned.search(command) or owned.search(conf[0].decode(errors="replace") if conf else "")
        if match and _gone(int(match.group(1))):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
    for folder in Path("/tmp").glob(f"{PREFIX}*"):
        owner = re.match(rf"{re.escape(PREFIX)}(\d+)-", folder.name)
        if owner and _gone(int(owner.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
    return killed


def _gone(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
