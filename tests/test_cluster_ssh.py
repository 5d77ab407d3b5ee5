"""ezpool.cluster.SSH: workers started over a real ``ssh`` on real ``sshd`` hosts, dialling back.

The hosts are network namespaces (``tests/hosts.py``), each with its own ``sshd``
(``tests/sshd.py``), reached as ``h0`` and ``h1`` through an ``ssh_config`` made
for the test. The pool runs here, in the root namespace, on the service address
every host routes to. Needs Linux, root and OpenSSH; skipped otherwise, saying why.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
import time

import pytest

from ezpool.cluster import SSH, Joining
from ezpool.errors import ClusterError
from tests import hosts, sshd
from tests.conftest import REPO_ROOT

#: A key for ``Joining``s that no pool checks (the cluster only carries it).
KEY = secrets.token_hex(32).encode("ascii")


@pytest.fixture(scope="module")
def _ready():
    """Once a module: skip unless namespaces and OpenSSH are here; remove what dead sessions left."""
    reason = hosts.unavailable() or sshd.unavailable()
    if reason:
        pytest.skip(reason)
    hosts.sweep()


@pytest.fixture
def ssh_network(_ready):
    """Two hosts, removed with everything running in them after the test."""
    with hosts.Network(2) as net:
        yield net


@pytest.fixture
def ssh_servers(ssh_network, tmp_path):
    """An ``sshd`` in each host (``h0``, ``h1``); their sessions import this checkout (``PYTHONPATH``)."""
    servers = sshd.Servers(ssh_network, tmp_path / "ssh", env={"PYTHONPATH": str(REPO_ROOT)})
    try:
        yield servers
    finally:
        servers.close()


def joining(address: str = "127.0.0.1:9", key: bytes = KEY) -> Joining:
    return Joining(address=address, key=key)


def wait_for_cluster_error(cluster: SSH, timeout: float = 30.0) -> ClusterError:
    """Call ``check()`` as a pool would, until it raises; the error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            cluster.check()
        except ClusterError as exc:
            return exc
        time.sleep(0.2)
    raise AssertionError(f"{cluster!r}.check() raised nothing in {timeout} s")


# --- what SSH refuses before it starts anything ---


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "spec",
    ["node:0", "node:x", "node:", ":3", "", "fe80::1", "-oProxyCommand=touch /tmp/x", "two words", "a'b"],
)
def test_a_host_ssh_could_not_take_is_refused_naming_it(spec):
    with pytest.raises(ValueError, match=re.escape(f"SSH host {spec!r}")):
        SSH(["good", spec])


@pytest.mark.timeout(10)
def test_a_lone_string_or_no_host_is_refused_saying_how_to_write_it():
    with pytest.raises(ValueError, match=r"SSH\(\['node1'\]\)"):
        SSH("node1")
    with pytest.raises(ValueError, match="at least one host"):
        SSH([])
    with pytest.raises(ValueError, match="tunnel"):
        SSH(["node1"], tunnel="yes")  # type: ignore[arg-type]


@pytest.mark.timeout(10)
def test_host_specs_count_worker_processes():
    cluster = SSH(["h0", "me@h1:3", "h0:2"])
    assert [(h.destination, h.procs) for h in cluster.hosts] == [("h0", 1), ("me@h1", 3), ("h0", 2)]
    assert cluster.expected == 6


@pytest.mark.timeout(30)
def test_options_ssh_refuses_fail_at_start_naming_the_host_and_ssh_s_words():
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client here: install openssh-client")
    cluster = SSH(["node7"], ssh_options=["-o", "NoSuchOption=1"])
    with pytest.raises(ClusterError, match=r"node7.*NoSuchOption"):
        cluster.start(joining())
    cluster.stop()


@pytest.mark.timeout(30)
def test_the_ssh_command_lines_hold_no_key_and_read_it_from_standard_input():
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client here: install openssh-client")
    cluster = SSH(["node1", "node2:4"], ssh_options=["-F", "/dev/null"], tunnel=False)
    commands = cluster.commands(joining("10.0.0.1:7000"))
    assert len(commands) == 2
    for command in commands:
        assert KEY.decode() not in " ".join(command)
        assert command[:3] == ["ssh", "-F", "/dev/null"] and "BatchMode=yes" in command
        remote = command[-1]
        assert "--key-stdin" in remote and "--connect 10.0.0.1:7000" in remote
    assert "--procs 4" in commands[1][-1] and "--procs" not in commands[0][-1]

    tunnelled = SSH(["node1"], ssh_options=["-F", "/dev/null"]).commands(joining("127.0.0.1:7000"))[0]
    assert tunnelled[tunnelled.index("-R") + 1] == "0:127.0.0.1:7000"
    assert "ExitOnForwardFailure=yes" in tunnelled and "--connect -" in tunnelled[-1]


# --- hosts that cannot run a worker, through real sshd ---


@pytest.mark.timeout(60)
def test_every_host_failing_is_a_cluster_error_naming_each_and_why(ssh_servers, ssh_network, caplog):
    ssh_network.hosts[0].cut()  # h0 does not answer: ssh's ConnectTimeout (5 s in the test config)
    cluster = SSH(["h0", "h1"], python="/nowhere/python3", ssh_options=ssh_servers.ssh_options)
    try:
        with caplog.at_level(logging.ERROR, logger="ezpool"):
            cluster.start(joining(f"{ssh_network.service_address}:9"))
            error = wait_for_cluster_error(cluster)
    finally:
        cluster.stop()
    message = str(error)
    assert "h0" in message and "timed out" in message, message
    assert "h1" in message and "/nowhere/python3" in message and "pass python=" in message, message
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("ssh host h0" in m for m in logged) == 1, logged  # once each, though check ran often
    assert sum("ssh host h1" in m for m in logged) == 1, logged


@pytest.mark.timeout(60)
def test_a_python_without_ezpool_on_the_host_is_named_as_such(ssh_servers, ssh_network, tmp_path):
    bare = tmp_path / "venv-without-ezpool"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    python = str(bare / "bin" / "python")
    check = subprocess.run([python, "-c", "import ezpool"], capture_output=True, env={}, cwd=bare, timeout=30)
    assert check.returncode != 0, "the bare venv imports ezpool"
    env_free = [*ssh_servers.ssh_options, "-o", "SetEnv=EZPOOL_TEST=1"]  # no PYTHONPATH to this checkout
    cluster = SSH(["h1"], python=python, ssh_options=env_free)
    try:
        cluster.start(joining(f"{ssh_network.service_address}:9"))
        error = wait_for_cluster_error(cluster)
    finally:
        cluster.stop()
    assert "h1" in str(error) and "No module named 'ezpool'" in str(error), str(error)
    assert "ezpool is not installed for the python run there" in str(error)


def _ezpool_processes(network) -> dict[int, str]:
    return {
        pid: line for host in network.hosts for pid, line in host.command_lines().items() if "ezpool" in line
    }


def _no_process_holds(text: str) -> list[str]:
    """The command lines of every process on the machine that contain ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    line = file.read().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            if text in line:
                found.append(line)
    return found
