"""ezpool.cluster.SSH: workers started over a real ``ssh`` on real ``sshd`` hosts, dialling back.

The hosts are network namespaces (``tests/hosts.py``), each with its own ``sshd``
(``tests/sshd.py``), reached as ``h0`` and ``h1`` through an ``ssh_config`` made
for the test. The pool runs here, in the root namespace, on the service address
every host routes to. Needs Linux, root and OpenSSH; skipped otherwise, saying why.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ezpool import Pool
from ezpool.cluster import SSH, Joining
from ezpool.errors import ClusterError
from tests import _workers as w
from tests import hosts, sshd
from tests.conftest import REPO_ROOT, eventually, free_port

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
    """An ``sshd`` in each host (``h0``, ``h1``); their sessions import this checkout (``PYTHONPATH``)
    and find the tests' key file (``XDG_CONFIG_HOME``), as hosts sharing a home would."""
    shared = {"PYTHONPATH": str(REPO_ROOT), "XDG_CONFIG_HOME": os.environ["XDG_CONFIG_HOME"]}  # a shared home
    servers = sshd.Servers(ssh_network, tmp_path / "ssh", env=shared)
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
def test_a_login_sshd_refuses_is_named_with_ssh_s_words(ssh_servers, ssh_network):
    cluster = SSH(["nosuchuser@h0"], ssh_options=ssh_servers.ssh_options)
    try:
        cluster.start(joining(f"{ssh_network.service_address}:9"))
        error = wait_for_cluster_error(cluster)
    finally:
        cluster.stop()
    assert "nosuchuser@h0" in str(error) and "Permission denied" in str(error), str(error)


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



# --- maps over both hosts, with real workers ---


def host_of(network, pids):
    """Which host (its index) each of ``pids`` runs in, for those still running."""
    where = {pid: n for n, host in enumerate(network.hosts) for pid in host.pids()}
    return {pid: where.get(pid) for pid in pids}


def ezpool_processes(network) -> dict[str, list[str]]:
    """The command lines of the ezpool processes in each host (by namespace)."""
    return {
        host.namespace: [line for line in host.command_lines().values() if "ezpool" in line]
        for host in network.hosts
    }


def nothing_left(network) -> bool:
    return not any(ezpool_processes(network).values())


def command_lines_holding(text: str) -> list[str]:
    """The command lines of every process on this machine (all namespaces) that hold ``text``."""
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


def local_ssh_pids(config, destination: str) -> list[int]:
    """The ``ssh`` processes this test process runs to ``destination`` with ``config``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    argv = file.read().split(b"\0")
                with open(f"/proc/{entry}/stat") as file:
                    parent = int(file.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == os.getpid() and argv[0] == b"ssh" and str(config).encode() in argv \
                    and destination.encode() in argv:
                pids.append(int(entry))
    return pids


@pytest.mark.timeout(120)
def test_a_map_runs_on_workers_started_over_ssh_on_both_hosts_and_none_outlives_the_pool(
    ssh_servers, ssh_network
):
    service = ssh_network.service_address
    key = secrets.token_hex(32)
    cluster = SSH(["h0", "h1:2"], ssh_options=ssh_servers.ssh_options)
    assert cluster.expected == 3
    with Pool(mode="distributed", workers=cluster, listen=f"{service}:0", hmac_key=key) as pool:
        results = pool.dmap(w.SquareNap, range(60))
        where = host_of(ssh_network, {pid for _, pid in results.values()})
        # The key went over standard input: no process on the machine has it on its command line.
        assert command_lines_holding(key) == []
        on_h1 = [line for line in ezpool_processes(ssh_network)[ssh_network.hosts[1].namespace]]
        assert any("--procs 2" in line for line in on_h1), on_h1

    assert results.errors == {} and len(results) == 60
    assert all(results[x][0] == x * x for x in range(60))
    assert set(where.values()) == {0, 1}, where  # both hosts worked, and every worker ran in one
    eventually(lambda: nothing_left(ssh_network), "host without ezpool processes after the pool closed", 15)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["sshd killed", pytest.param("link cut", marks=pytest.mark.slow)])
def test_a_host_lost_mid_run_costs_nothing_and_is_named(ssh_servers, ssh_network, how, caplog):
    service = ssh_network.service_address
    lost = ssh_network.hosts[0]
    tasks = range(200)  # 0.05 s each: about 3.5 s on three processes, 5 s on two

    def progress(outcome, done, total):
        if done == 30:
            if how == "sshd killed":
                ssh_servers["h0"].kill()
            else:
                lost.cut()

    cluster = SSH(["h0", "h1:2"], ssh_options=ssh_servers.ssh_options)
    try:
        with caplog.at_level(logging.WARNING, logger="ezpool"), \
                Pool(mode="distributed", workers=cluster, listen=f"{service}:0", heartbeat=2) as pool:
            results = pool.dmap(w.SquareNap, tasks, progress=progress)
            # The host's session is gone, and what said so names it (ssh's keep-alive: 3 s).
            eventually(lambda: any("ssh host h0" in r.getMessage() for r in caplog.records),
                       "log line naming h0", 20)
            assert nothing_left_on(lost) if how == "sshd killed" else True
    finally:
        lost.restore()

    assert results.errors == {} and len(results) == len(tasks)
    assert all(results[x][0] == x * x for x in tasks)
    # Its worker left with its session (sshd's keep-alive ends a cut one within 3 s).
    eventually(lambda: nothing_left(ssh_network), "host without ezpool processes", 20)


def nothing_left_on(host) -> bool:
    return eventually(
        lambda: not [line for line in host.command_lines().values() if "ezpool" in line],
        f"{host} without ezpool processes", 15,
    )


@pytest.mark.timeout(120)
def test_a_host_that_does_not_answer_is_named_and_the_others_go_on(ssh_servers, ssh_network, caplog):
    service = ssh_network.service_address
    ssh_network.hosts[1].cut()  # h1 is silent: ssh gives up after ConnectTimeout (5 s here)
    cluster = SSH(["h0", "h1"], ssh_options=ssh_servers.ssh_options)
    with caplog.at_level(logging.WARNING, logger="ezpool"), \
            Pool(mode="distributed", workers=cluster, listen=f"{service}:0") as pool:
        results = pool.dmap(w.SquareNap, range(160))  # about 8 s on h0's one process
        where = host_of(ssh_network, {pid for _, pid in results.values()})
    assert results.errors == {} and all(results[x][0] == x * x for x in range(160))
    assert set(where.values()) == {0}
    said = [r.getMessage() for r in caplog.records if "ssh host h1" in r.getMessage()]
    assert len(said) == 1 and "timed out" in said[0], said


@pytest.mark.timeout(120)
def test_every_host_failing_fails_the_pool_with_a_cluster_error_naming_each(ssh_servers, ssh_network):
    service = ssh_network.service_address
    for host in ssh_network.hosts:
        host.cut()
    cluster = SSH(["h0", "h1:2"], ssh_options=ssh_servers.ssh_options)
    began = time.monotonic()
    with pytest.raises(ClusterError) as raised, \
            Pool(mode="distributed", workers=cluster, listen=f"{service}:0") as pool:
        pool.dmap(w.SquareNap, range(10))
    message = str(raised.value)
    assert "h0" in message and "h1" in message and "timed out" in message, message
    assert time.monotonic() - began < 30  # ConnectTimeout (5 s) and a look, not a hang


@pytest.mark.timeout(120)
def test_killing_the_local_ssh_ends_the_worker_on_its_host(ssh_servers, ssh_network):
    service = ssh_network.service_address
    h0 = ssh_network.hosts[0]
    cluster = SSH(["h0", "h1"], ssh_options=ssh_servers.ssh_options)
    killed = []

    def progress(outcome, done, total):
        if done == 20:
            for pid in local_ssh_pids(ssh_servers.config, "h0"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    with Pool(mode="distributed", workers=cluster, listen=f"{service}:0", heartbeat=2) as pool:
        results = pool.dmap(w.SquareNap, range(120), progress=progress)
        assert len(killed) == 1
        nothing_left_on(h0)  # while the pool still runs
    assert results.errors == {} and len(results) == 120


CLIENT = """\
import sys
from ezpool import Pool
from ezpool.cluster import SSH
from tests import _workers as w

config, service = sys.argv[1:]
cluster = SSH(["h0", "h1:2"], ssh_options=["-F", config])
with Pool(mode="distributed", workers=cluster, listen=service + ":0") as pool:
    pool.dmap(w.SquareNap, range(2000), progress=lambda o, d, n: d == 10 and print("running", flush=True))
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_client_killed_outright_leaves_no_ssh_and_no_worker(
    ssh_servers, ssh_network, tmp_path, core_child_env
):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    client = subprocess.Popen(
        [sys.executable, str(script), str(ssh_servers.config), ssh_network.service_address],
        stdout=subprocess.PIPE, text=True, env=core_child_env, cwd=tmp_path, start_new_session=True,
    )
    try:
        assert client.stdout.readline().strip() == "running"
        assert all(ezpool_processes(ssh_network).values())
        client.kill()  # no stop(), no atexit: only the ends of the pipes its ssh's hold close
        client.wait(10)
        # Each worker reads the end of its input and leaves (within its grace, 10 s), and its
        # ssh with it.
        eventually(lambda: nothing_left(ssh_network), "host without ezpool processes", 30)
        eventually(lambda: not command_lines_holding(str(ssh_servers.config)), "local ssh gone", 10)
    finally:
        if client.poll() is None:
            client.kill()
        client.communicate(timeout=10)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("listen, tunnel", [("127.0.0.1:0", None), (None, True)])
def test_a_tunnel_carries_the_workers_where_the_hosts_cannot_reach_the_pool(
    ssh_servers, ssh_network, listen, tunnel, tmp_path
):
    cluster = SSH(["h0", "h1"], ssh_options=ssh_servers.ssh_options, tunnel=tunnel)
    listening = {"listen": listen} if listen else {}  # default: this machine's own address
    listen_file = tmp_path / "pool.json"
    with Pool(mode="distributed", workers=cluster, listen_file=listen_file, **listening) as pool:
        address = json.loads(listen_file.read_text())["address"]
        host = address.rpartition(":")[0]
        unreachable = subprocess.run(
            ssh_network.hosts[0].command(["python3", "-c", _PROBE, host, address.rpartition(":")[2]]),
            capture_output=True, text=True, timeout=30,
        )
        assert unreachable.stdout.startswith("closed"), unreachable  # no route from the hosts
        results = pool.dmap(w.SquareNap, range(40))
        where = host_of(ssh_network, {pid for _, pid in results.values()})
    assert results.errors == {} and all(results[x][0] == x * x for x in range(40))
    assert set(where.values()) == {0, 1}, where


@pytest.mark.timeout(120)
def test_the_recipe_ssh_host_ezpool_serve_connect_works_without_a_terminal(ssh_servers, ssh_network):
    serve = os.path.join(os.path.dirname(sys.executable), "ezpool-serve")
    if not os.access(serve, os.X_OK):
        pytest.skip(f"no ezpool-serve script next to {sys.executable} (pip install the package)")
    service = ssh_network.service_address
    address = f"{service}:{free_port(service)}"
    with Pool(mode="distributed", listen=address) as pool:  # the user's own key, in the shared home
        sessions = [
            subprocess.Popen(
                ["ssh", *ssh_servers.ssh_options, name, serve, "--connect", address],  # the recipe
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True,
            )
            for name in ("h0", "h1")
        ]
        try:
            results = pool.dmap(w.SquareNap, range(60))
            where = host_of(ssh_network, {pid for _, pid in results.values()})
        finally:
            pool.shutdown()
            said = [session.communicate(timeout=30) for session in sessions]
    assert results.errors == {} and set(where.values()) == {0, 1}, where
    for session, (out, err) in zip(sessions, said):
        assert session.returncode == 0, err  # the pool closed: the worker left, and its ssh with it
        assert f"joined the pool at {address}".encode() in err, err
        assert b"\r" not in out + err
    eventually(lambda: nothing_left(ssh_network), "host without ezpool processes after the pool closed", 15)


#: Connect to ADDRESS PORT; print "open" if something accepts.
_PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close(); print('open')\n"
    "except OSError as exc:\n"
    "    print('closed', exc)\n"
)


@pytest.mark.timeout(120)
def test_killing_the_ssh_of_the_manual_recipe_ends_its_worker(ssh_servers, ssh_network):
    serve = os.path.join(os.path.dirname(sys.executable), "ezpool-serve")
    if not os.access(serve, os.X_OK):
        pytest.skip(f"no ezpool-serve script next to {sys.executable} (pip install the package)")
    service = ssh_network.service_address
    address = f"{service}:{free_port(service)}"
    with Pool(mode="distributed", listen=address) as pool:
        session = subprocess.Popen(
            ["ssh", *ssh_servers.ssh_options, "h0", serve, "--connect", address],  # the recipe
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            listener = pool._backends["distributed"]._dial.listener
            eventually(lambda: len(listener.links) == 1, "the worker joined", 30)
            session.kill()  # the local ssh dies: its channel, the worker's input, ends on the host
            session.communicate(timeout=10)
            host = ssh_network.hosts[0]
            eventually(lambda: not [line for line in host.command_lines().values() if "ezpool" in line],
                       "the worker left with its ssh", 30)
        finally:
            if session.poll() is None:
                session.kill()
                session.communicate()
