"""Real OpenSSH servers in the hosts of ``tests/hosts.py``, and an ``ssh_config`` that reaches them.

``Servers(network, directory)`` starts one ``sshd`` in each host of a ``Network``,
every one with a host key and a configuration of its own in ``directory``; nothing
of the machine's own ssh setup is read or touched (``/run/sshd``, which ``sshd``
insists on, is made if missing and removed again if it made it)::

    root namespace (the client)                      host n: namespace ezp-<pid>-<n>
    ────────────────────────────                      ───────────────────────────────
    ssh -F DIR/ssh_config hN ─── TCP ──────────────▶ sshd -f DIR/hN/sshd_config -D -e
        User root, IdentityFile DIR/id_ed25519          ListenAddress 10.213.S.4n+2:220n
        UserKnownHostsFile DIR/known_hosts (filled        AuthorizedKeysFile DIR/authorized_keys
          with every host's key: checked strictly)        UsePAM no, keys only
        SetEnv NAME=VALUE (``env``)                       AcceptEnv NAME
                                                          log: DIR/hN/sshd.log

The hosts share this machine's file system, so ``python`` and ``ezpool`` are the
same there; ``env`` passes the variables a login would not set (``PYTHONPATH``, say)
through ``SetEnv``/``AcceptEnv``, as a site's shared home would. Both ends send a
keep-alive every second and give up after three unanswered, so a host that is cut
off ends its sessions (and the commands in them) within a few seconds.

``Servers.close()`` stops the servers; ``Network.close()`` kills whatever is left
in the hosts anyway.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from tests.hosts import Host, Network

__all__ = ["unavailable", "Sshd", "Servers"]

SSHD = "/usr/sbin/sshd"
#: The directory ``sshd`` checks for privilege separation before it starts.
PRIVSEP = Path("/run/sshd")


def unavailable() -> Optional[str]:
    """Why real ssh servers cannot run here, or ``None`` when they can."""
    missing = [name for name in ("ssh", "ssh-keygen") if shutil.which(name) is None]
    if not os.path.exists(SSHD):
        missing.append(SSHD)
    if missing:
        return f"OpenSSH is missing ({', '.join(missing)}): install openssh-server and openssh-client"
    return None


def keygen(path: Path, comment: str) -> str:
    """Make a fresh ed25519 key pair at ``path`` (no passphrase); its public line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True, capture_output=True, timeout=30,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


class Sshd:
    """One ``sshd`` in one host, reached as ``name`` through the ``ssh_config`` of its ``Servers``."""

    def __init__(self, name: str, host: Host, port: int, directory: Path) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.directory = directory
        self.config = directory / "sshd_config"
        self.log = directory / "sshd.log"
        self.process: Optional[subprocess.Popen[str]] = None

    def __repr__(self) -> str:
        return f"Sshd({self.name!r}, {self.host.address}:{self.port})"

    def start(self, authorized_keys: Path, accept_env: list[str]) -> str:
        """Write the configuration, start the server, and wait until it answers; its host key's line."""
        host_key = self.directory / "host_ed25519"
        public = keygen(host_key, f"ezpool-test-{self.name}")
        lines = [
            f"ListenAddress {self.host.address}:{self.port}",
            f"HostKey {host_key}",
            f"PidFile {self.directory / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized_keys}",
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "StrictModes no",
            "PrintMotd no",
            "ClientAliveInterval 1",
            "ClientAliveCountMax 3",
            "LogLevel VERBOSE",
        ]
        if accept_env:
            lines.append("AcceptEnv " + " ".join(accept_env))
        self.config.write_text("\n".join(lines) + "\n")
        test = subprocess.run(
            [SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True, timeout=30
        )
        if test.returncode:
            raise RuntimeError(f"sshd refuses {self.config}: {test.stderr.strip()}")
        log = open(self.log, "a")  # noqa: SIM115 - the server writes to it for as long as it runs
        with log:
            self.process = self.host.run(
                [SSHD, "-f", str(self.config), "-D", "-e"], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._wait_until_it_answers()
        return public.rsplit(" ", 1)[0]  # the type and the key, without the comment

    def _wait_until_it_answers(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self} exited ({self.process.returncode}): {self.log.read_text()}")
            try:
                with socket.create_connection((self.host.address, self.port), timeout=1) as sock:
                    sock.settimeout(5)
                    if sock.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self} did not answer in {timeout} s: {self.log.read_text()}")
            time.sleep(0.05)

    def pids(self) -> list[int]:
        """Every ``sshd`` process in the host: the listener and one or two per session."""
        return [pid for pid in self.host.pids() if _comm(pid) == "sshd"]

    def kill(self) -> None:
        """SIGKILL the server and every session it holds, as when its machine's sshd dies."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        self.kill()


class Servers:
    """An ``sshd`` in every host of ``network`` (named ``h0``, ``h1``...), files in ``directory``.

    ``ssh_options`` (``["-F", DIR/ssh_config]``) reach them as root with a key made
    now; ``env`` is set in every session (``SetEnv``, accepted by the servers).
    """

    def __init__(self, network: Network, directory: Path, env: Optional[Mapping[str, str]] = None) -> None:
        self.directory = directory
        self.env = dict(env or {})
        self.servers: list[Sshd] = []
        self._made_privsep = False
        try:
            self._start(network)
        except BaseException:
            self.close()
            raise

    def _start(self, network: Network) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        if not PRIVSEP.exists():
            PRIVSEP.mkdir(mode=0o755)
            self._made_privsep = True
        self.identity = self.directory / "id_ed25519"
        self.authorized_keys = self.directory / "authorized_keys"
        self.authorized_keys.write_text(keygen(self.identity, "ezpool-test-client") + "\n")
        self.known_hosts = self.directory / "known_hosts"
        known = []
        for n, host in enumerate(network.hosts):
            server = Sshd(f"h{n}", host, 2201 + n, self.directory / f"h{n}")
            server.directory.mkdir()
            self.servers.append(server)
            host_key = server.start(self.authorized_keys, sorted(self.env))
            known.append(f"[{host.address}]:{server.port} {host_key}")
        self.known_hosts.write_text("\n".join(known) + "\n")
        self.config = self.directory / "ssh_config"
        self.config.write_text(self._client_config())

    def _client_config(self) -> str:
        lines = []
        for server in self.servers:
            lines += [f"Host {server.name}", f"    HostName {server.host.address}", f"    Port {server.port}"]
        lines += [
            "Host *",
            "    User root",
            f"    IdentityFile {self.identity}",
            "    IdentitiesOnly yes",
            "    IdentityAgent none",
            f"    UserKnownHostsFile {self.known_hosts}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "    ConnectTimeout 5",
            "    ServerAliveInterval 1",
            "    ServerAliveCountMax 3",
        ]
        if self.env:
            pairs = [f'{name}="{value}"' for name, value in sorted(self.env.items())]
            lines.append("    SetEnv " + " ".join(pairs))
        return "\n".join(lines) + "\n"

    @property
    def ssh_options(self) -> list[str]:
        """The options that make ``ssh`` use this configuration."""
        return ["-F", str(self.config)]

    def __getitem__(self, name: str) -> Sshd:
        for server in self.servers:
            if server.name == name:
                return server
        raise KeyError(name)

    def ssh(self, name: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on host ``name`` through ``ssh``, and wait for it."""
        return subprocess.run(
            ["ssh", *self.ssh_options, name, "--", *command],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        if self._made_privsep:
            with contextlib.suppress(OSError):
                PRIVSEP.rmdir()
            self._made_privsep = False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
