"""dmap across a real network: workers in their own network namespaces ("hosts").

Each host is a namespace joined to this one by a veth pair (see ``tests/hosts.py``);
the client and the name server run here, in the root namespace. Needs Linux and
root (CI has both); skipped otherwise, saying why.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from ezpool import AuthenticationError, Pool, WorkerUnavailable, list_workers
from tests import _workers as w
from tests import hosts
from tests.conftest import free_port, read_lines, wait_for_port

#: Every host has a network stack of its own, so they can all serve on one port.
PORT = 21000


class Key(NamedTuple):
    text: str
    file: Path


@pytest.fixture(scope="session")
def _netns():
    """Once a session: skip unless namespaces can be made; remove what dead sessions left."""
    reason = hosts.unavailable()
    if reason:
        pytest.skip(reason)
    hosts.sweep()


@pytest.fixture
def network(_netns):
    """Two hosts, removed with everything running in them after the test."""
    with hosts.Network(2) as net:
        yield net


@pytest.fixture
def key(tmp_path):
    """A fresh HMAC key, and the file holding it (mode 0600 from the start)."""
    key = Key(secrets.token_hex(16), tmp_path / "hmac-key")
    fd = os.open(key.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.text + "\n")
    return key


@pytest.fixture
def root_name_server(network, key, start_daemon, core_child_env):
    """EzPool's name server in the root namespace, on the service address every host reaches."""
    address, port = network.service_address, free_port(network.service_address)
    command = [sys.executable, "-m", "ezpool.nameserver", "--host", address, "--port", str(port),
               "--hmac-key-file", str(key.file)]
    start_daemon(command, expect=1, env=core_child_env)
    wait_for_port(address, port)
    return f"{address}:{port}"


@pytest.fixture
def serve_on(key, root_name_server, core_child_env):
    """``serve_on(host, spec)``: an ``ezpool.serve`` on ``host``, registered; its URI and pid."""

    def start(host, spec):
        command = [sys.executable, "-m", "ezpool.serve", spec, "--host", host.address, "--port", str(PORT)]
        command += ["--hmac-key-file", str(key.file), "--ns", root_name_server]
        process = host.run(command, env=core_child_env)
        (uri,) = read_lines(process, 1, host.command(command))
        return uri, process.pid

    return start


@pytest.mark.timeout(60)
def test_workers_on_two_hosts_are_found_through_the_name_server_and_both_work(
    network, key, root_name_server, serve_on
):
    served = dict(serve_on(host, "tests._workers:SquareNap") for host in network.hosts)
    assert set(served) == {f"PYRO:worker@{host.address}:{PORT}" for host in network.hosts}

    found = list_workers(ns=root_name_server, hmac_key=key.text)
    assert sorted(found) == sorted(served)
    with Pool(heartbeat=2) as pool:
        results = pool.dmap(w.SquareNap, range(40), workers=found, spawn=False, hmac_key=key.text)

    assert results.errors == {} and len(results) == 40
    assert all(results[x] == (x * x, served[results.workers[x]]) for x in range(40))
    assert set(results.workers.values()) == set(served)  # both hosts did some


@pytest.mark.timeout(60)
def test_a_host_refuses_a_client_with_the_wrong_key(network, serve_on):
    uri, _ = serve_on(network.hosts[0], "tests._workers:SquareNap")
    with Pool() as pool, pytest.raises(AuthenticationError, match="key is wrong"):
        pool.dmap(w.SquareNap, [1], workers=[uri], spawn=False, hmac_key="not-the-key-9d4e2a7c1f5b3e8a6d")


@pytest.mark.timeout(60)
def test_the_name_server_says_when_the_key_is_wrong(network, root_name_server, serve_on):
    serve_on(network.hosts[0], "tests._workers:SquareNap")
    with pytest.raises(AuthenticationError):
        list_workers(ns=root_name_server, hmac_key="not-the-key-9d4e2a7c1f5b3e8a6d")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_host_cut_off_mid_run_loses_nothing_and_rejoins_once_its_link_is_back(
    network, key, root_name_server, serve_on, caplog
):
    cut_host, other_host = network.hosts
    cut_uri, cut_pid = serve_on(cut_host, "tests._workers:SquareNap")
    other_uri, other_pid = serve_on(other_host, "tests._workers:SquareNap")
    pids = {cut_uri: cut_pid, other_uri: other_pid}
    tasks = range(300)  # 0.05 s each: about 8 s on two hosts, 15 s on one
    finished: list[tuple[float, str]] = []  # when each task came back, and from where
    marks: dict[str, float] = {}

    def restore():
        cut_host.restore()
        marks["restored"] = time.monotonic()

    restorer = threading.Timer(5.0, restore)

    def progress(outcome, done, total):
        finished.append((time.monotonic(), outcome.worker))
        if done == 30:  # both hosts are busy by now
            cut_host.cut()
            marks["cut"] = time.monotonic()
            restorer.start()

    try:
        with caplog.at_level(logging.WARNING, logger="ezpool"), Pool(heartbeat=2) as pool:
            results = pool.dmap(
                w.SquareNap, tasks, workers=[cut_uri, other_uri], spawn=False, hmac_key=key.text,
                progress=progress,
            )
            restorer.join(30)
            again = pool.dmap(
                w.SquareNap, range(1000, 1040), workers=[cut_uri, other_uri], spawn=False, hmac_key=key.text
            )
    finally:
        restorer.cancel()
        cut_host.restore()

    # Nothing lost: every task has its own value, from the process its result names.
    assert results.errors == {} and len(results) == len(tasks)
    assert all(results[x] == (x * x, pids[results.workers[x]]) for x in tasks)
    messages = [record.getMessage() for record in caplog.records]
    assert any("unanswered" in m and cut_uri in m for m in messages), messages
    assert any("answers again" in m and cut_uri in m for m in messages), messages

    # While the link was down the other host did the work (a reply already on its
    # way when the link went down may still arrive in the first second).
    cut, restored = marks["cut"], marks["restored"]
    during = [worker for at, worker in finished if cut + 1.0 < at < restored]
    assert during and set(during) == {other_uri}, during
    # Once it was back, the cut host got work again in the same call, and in the next.
    after = [at - restored for at, worker in finished if worker == cut_uri and at > restored]
    assert after, "the cut host did no task after its link came back"
    assert set(again.workers.values()) == {cut_uri, other_uri}
    assert all(again[x] == (x * x, pids[again.workers[x]]) for x in again)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_host_cut_off_for_good_costs_nothing_and_the_call_ends_without_it(network, key, serve_on):
    cut_host = network.hosts[0]
    served = dict(serve_on(host, "tests._workers:SquareNap") for host in network.hosts)
    tasks = range(100)

    def progress(outcome, done, total):
        if done == 20:
            cut_host.cut()

    began = time.monotonic()
    with Pool(heartbeat=2) as pool:
        results = pool.dmap(
            w.SquareNap, tasks, workers=list(served), spawn=False, hmac_key=key.text, progress=progress
        )
    took = time.monotonic() - began

    assert results.errors == {} and len(results) == len(tasks)
    assert all(results[x] == (x * x, served[results.workers[x]]) for x in tasks)
    assert took < 60, f"the call waited {took:.0f} s for a host that was gone"  # about 5 s here


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_call_that_starts_while_a_host_is_cut_off_goes_on_without_it_and_names_it(
    network, key, serve_on, caplog
):
    cut_host, other_host = network.hosts
    cut_uri, _ = serve_on(cut_host, "tests._workers:SquareNap")
    other_uri, other_pid = serve_on(other_host, "tests._workers:SquareNap")
    cut_host.cut()  # silence, not a refusal: the connection attempt has to time out

    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ezpool"), Pool(heartbeat=2) as pool:
        results = pool.dmap(w.SquareNap, range(10), workers=[cut_uri, other_uri], spawn=False,
                            hmac_key=key.text)
        assert results == {x: (x * x, other_pid) for x in range(10)}
        assert any(cut_uri in r.message and "goes on without it" in r.message for r in caplog.records)
        assert time.monotonic() - began < 30
        # With every listed host silent, the call fails at once, naming the host.
        with pytest.raises(WorkerUnavailable, match=re.escape(cut_uri)):
            pool.dmap(w.SquareNap, range(10), workers=[cut_uri], spawn=False, hmac_key=key.text)
