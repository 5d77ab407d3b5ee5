"""A host that takes no inbound connection: workers that dial in serve it, ``PYRO:`` workers cannot.

The host is a network namespace (``tests/hosts.py``) whose own ``nftables`` drop
every new inbound TCP connection, as a compute node behind a one-way firewall::

    root namespace: the pool on the service address     host: namespace with the firewall
    ────────────────────────────────────────────────     ──────────────────────────────────
    Pool(listen="10.213.S.1:PORT")  ◀─── dials out ───── ezpool-serve --connect 10.213.S.1:PORT
    dmap(workers=["PYRO:worker@host:P"]) ── SYN ──▶ ✗   ezpool-serve --host ADDRESS --port P
                                                        table inet ezpool_firewall: input chain,
                                                          established/related and loopback
                                                          accepted, new TCP dropped (silently)

Needs Linux, root and ``nft``; skipped otherwise, saying why.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from ezpool import Pool, WorkerUnavailable
from tests import _workers as w
from tests import hosts
from tests.conftest import free_port, read_lines

#: The firewall of the host: what it started keeps flowing, nothing new comes in over TCP.
RULESET = """\
table inet ezpool_firewall {
    chain input {
        type filter hook input priority 0; policy accept;
        ct state established,related accept
        iif "lo" accept
        meta l4proto tcp ct state new drop
    }
}
"""
#: The port the firewalled host's PYRO: worker listens on (the host has a network stack of its own).
PYRO_PORT = 21000


class Key(NamedTuple):
    text: str
    file: Path


@pytest.fixture(scope="module")
def _ready():
    reason = hosts.unavailable()
    if reason:
        pytest.skip(reason)
    if shutil.which("nft") is None:
        pytest.skip("`nft` is missing (install nftables)")
    hosts.sweep()


@pytest.fixture
def firewalled(_ready):
    """One host whose inbound TCP connections are dropped; removed with all in it after the test."""
    with hosts.Network(1) as net:
        host = net.hosts[0]
        done = subprocess.run(
            host.command(["nft", "-f", "-"]), input=RULESET, capture_output=True, text=True, timeout=30
        )
        if done.returncode:
            pytest.skip(f"nft cannot set a firewall in a network namespace here: {done.stderr.strip()}")
        yield host


@pytest.fixture
def key(tmp_path):
    """A fresh key, and the file holding it (mode 0600 from the start)."""
    key = Key(secrets.token_hex(32), tmp_path / "key")
    fd = os.open(key.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(key.text + "\n")
    return key


@pytest.mark.timeout(90)
def test_workers_behind_the_firewall_dial_out_and_serve_a_whole_map(firewalled, key, core_child_env):
    service = firewalled.network.service_address
    port = free_port(service)
    command = [sys.executable, "-m", "ezpool.serve", "--connect", f"{service}:{port}", "--procs", "2",
               "--hmac-key-file", str(key.file)]
    worker = firewalled.run(command, env=core_child_env)  # before the pool: it keeps dialing
    with Pool(mode="distributed", listen=f"{service}:{port}", hmac_key=key.text) as pool:
        results = pool.dmap(w.SquareNap, range(80))
        inside = set(firewalled.pids())
    assert results.errors == {} and len(results) == 80
    assert all(results[x][0] == x * x for x in range(80))
    pids = {pid for _, pid in results.values()}
    assert pids <= inside and len(pids) == 2, (pids, inside)  # both processes, both behind the firewall
    # The pool closed, so the worker left, exit 0.
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert f"joined the pool at {service}:{port}" in err


@pytest.mark.timeout(90)
def test_a_pyro_worker_behind_the_firewall_cannot_be_reached_and_the_error_says_so(
    firewalled, key, core_child_env
):
    command = [sys.executable, "-m", "ezpool.serve", "tests._workers:SquareNap", "--host", firewalled.address,
               "--port", str(PYRO_PORT), "--hmac-key-file", str(key.file)]
    process = firewalled.run(command, env=core_child_env)
    (uri,) = read_lines(process, 1, firewalled.command(command))
    assert uri == f"PYRO:worker@{firewalled.address}:{PYRO_PORT}"
    # It serves inside its host, so the firewall is what stops the pool.
    inside = subprocess.run(
        firewalled.command([sys.executable, "-c", _PROBE, firewalled.address, str(PYRO_PORT)]),
        capture_output=True, text=True, timeout=30,
    )
    assert inside.stdout.strip() == "open", inside

    began = time.monotonic()
    with Pool() as pool, pytest.raises(WorkerUnavailable) as raised:
        pool.dmap(w.SquareNap, range(4), workers=[uri], spawn=False, hmac_key=key.text)
    message = str(raised.value)
    assert uri in message and "cannot be reached" in message and "timed out" in message, message
    assert time.monotonic() - began < 60


#: Connect to ADDRESS PORT; print "open" if something accepts.
_PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close(); print('open')\n"
    "except OSError as exc:\n"
    "    print('closed', exc)\n"
)
