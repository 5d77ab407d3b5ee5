"""Name-server registration: real ``ezpool.serve`` workers and real Pyro4 name servers on 127.0.0.1.

Workers here refresh every 0.5 s, so an entry expires after 1.5 s; every wait is a
bounded polling loop with a generous deadline, never an exact timing.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Callable

import pytest

from ezpool import Pool, WorkerUnavailable, _pyro, list_workers
from ezpool.naming import last_seen
from ezpool.security import user_key
from ezpool.serve import _child_args, _parser
from tests._workers import Square
from tests.conftest import eventually, free_port, listening

pytestmark = pytest.mark.timeout(90)

REFRESH = ("--ns-refresh", "0.5")


def _start_name_server(start_daemon: Callable[..., Any], port: int) -> Any:
    """A keyed name server on 127.0.0.1:``port``, once it accepts connections."""
    command = [sys.executable, "-m", "ezpool.nameserver", "--port", str(port)]
    served = start_daemon(command, expect=1)
    eventually(lambda: listening(port), f"a name server listening on {port}")
    return served




def _listed(ns: str, **options: Any) -> list[str]:
    """``list_workers``, or nothing while the name server is not answering."""
    try:
        return list_workers(ns, **options)
    except WorkerUnavailable:
        return []


def _kill(served: Any) -> None:
    os.killpg(served.process.pid, signal.SIGKILL)
    served.process.wait(15)


def _stop(served: Any) -> str:
    """SIGTERM a worker; its stderr."""
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(15) == 0
    return str(served.process.stderr.read())


def _entries(ns: str) -> dict[str, tuple[str, list[str]]]:
    with _pyro.NameServer(_pyro.name_server_uri(ns), user_key(), 5.0) as server:
        return server.entries("ezpool.")


def test_workers_register_again_after_the_name_server_restarts(serve, start_daemon):
    port = free_port()
    ns = f"127.0.0.1:{port}"
    first_ns = _start_name_server(start_daemon, port)
    workers = [serve("tests._workers:Square", "--ns", ns, *REFRESH) for _ in range(2)]
    uris = sorted(uri for worker in workers for uri in worker.uris)
    assert sorted(list_workers(ns)) == uris

    _kill(first_ns)
    time.sleep(1.5)  # a few refresh ticks with nobody answering: they must stay quiet
    _start_name_server(start_daemon, port)  # a new one, same port, empty
    eventually(lambda: len(_listed(ns)) == 2, "re-registration of both workers")
    assert sorted(list_workers(ns)) == uris

    with Pool(spawn=False) as pool:
        assert pool.dmap(Square, range(4), workers=list_workers(ns)) == {n: n * n for n in range(4)}
    for worker in workers:
        stderr = _stop(worker)
        assert stderr.count("cannot be reached") == 1, stderr  # one warning for the whole outage
        assert "Traceback" not in stderr


def test_a_killed_worker_expires_while_a_live_one_stays(serve, name_server):
    doomed = serve("tests._workers:Square", "--ns", name_server, *REFRESH)
    alive = serve("tests._workers:Square", "--ns", name_server, *REFRESH, "--name", "alive")
    assert sorted(list_workers(name_server)) == sorted(doomed.uris + alive.uris)

    _kill(doomed)  # no chance to unregister
    eventually(lambda: list_workers(name_server) == alive.uris, "expiry of the killed worker")
    # not only hidden from clients: the live worker removed the entry
    eventually(lambda: list_workers(name_server, ttl=1e9) == alive.uris, "removal by the live worker")
    assert [uri for uri, _ in _entries(name_server).values()] == alive.uris


def test_a_name_server_that_is_down_is_worker_unavailable_naming_it():
    ns = f"127.0.0.1:{free_port()}"
    with pytest.raises(WorkerUnavailable, match=f"name server {ns} cannot be reached"):
        list_workers(ns)


def test_a_pyro_daemon_that_is_not_a_name_server_is_worker_unavailable_naming_it(serve):
    port = free_port()
    serve("tests._workers:Square", port=port)  # answers Pyro4, but has no Pyro.NameServer object
    with pytest.raises(WorkerUnavailable, match=f"name server 127.0.0.1:{port} cannot be reached"):
        list_workers(f"127.0.0.1:{port}")


def test_a_worker_started_before_its_name_server_registers_when_it_comes_up(serve, start_daemon):
    port = free_port()
    ns = f"127.0.0.1:{port}"
    worker = serve("tests._workers:Square", "--ns", ns, *REFRESH)  # serves although nobody answers
    with pytest.raises(WorkerUnavailable):
        list_workers(ns)
    _start_name_server(start_daemon, port)
    assert eventually(lambda: _listed(ns), "registration") == worker.uris
    stderr = _stop(worker)
    assert stderr.count("cannot be reached") == 1, stderr
    assert eventually(lambda: list_workers(ns) == [], "unregistration on a clean stop")


def test_unstamped_entries_are_listed_and_expired_ones_are_not(name_server):
    now, uri = time.time(), "PYRO:worker@127.0.0.1:{}".format
    with _pyro.NameServer(_pyro.name_server_uri(name_server), user_key(), 5.0) as server:
        server.register("ezpool.by-hand", uri(1), {"team=optics"})
        server.register("ezpool.fresh", uri(2), {f"ezpool.seen={now}"})
        server.register("ezpool.old", uri(3), {f"ezpool.seen={now - 60}"})
        server.register("ezpool.slow", uri(4), {f"ezpool.seen={now - 60}", "ezpool.refresh=30"})
    assert list_workers(name_server) == [uri(1), uri(2), uri(4)]  # the slow one has 3 x 30 s
    assert list_workers(name_server, ttl=30) == [uri(1), uri(2)]
    assert len(list_workers(name_server, ttl=1e9)) == 4


def test_the_refresh_keeps_other_metadata_and_renews_the_stamp(serve, name_server):
    worker = serve("tests._workers:Square", "--ns", name_server, *REFRESH)
    [(name, (uri, metadata))] = _entries(name_server).items()
    assert uri == worker.uris[0]
    with _pyro.NameServer(_pyro.name_server_uri(name_server), user_key(), 5.0) as server:
        server.register(name, uri, {*metadata, "team=optics"})

    def renewed() -> bool:
        _, items = _entries(name_server)[name]
        return "team=optics" in items and (last_seen(items) or 0) > (last_seen(metadata) or 0)

    eventually(renewed, "a renewed stamp that keeps the other metadata")


@pytest.mark.parametrize("bad", ["0", "-1", "soon"])
def test_ns_refresh_must_be_a_positive_number_of_seconds(bad, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["tests._workers:Square", "--ns-refresh", bad])
    assert "--ns-refresh" in capsys.readouterr().err


def test_procs_pass_the_refresh_interval_to_every_process():
    args = _parser().parse_args(["tests._workers:Square", "--ns", "127.0.0.1:9090", "--ns-refresh", "0.5"])
    assert args.ns_refresh == 0.5
    child = _child_args(args, 21001)
    assert child[child.index("--ns-refresh") + 1] == "0.5"
    assert _parser().parse_args(["tests._workers:Square"]).ns_refresh == 5.0


def test_the_name_server_takes_hundreds_of_registrations_at_once(name_server):
    from concurrent.futures import ThreadPoolExecutor

    uri = _pyro.name_server_uri(name_server)

    def register(n: int) -> None:
        with _pyro.NameServer(uri, user_key(), 30.0) as server:
            server.register(f"ezpool.crowd.{n}", f"PYRO:worker@10.0.0.1:{20000 + n}", set())

    with ThreadPoolExecutor(max_workers=100) as threads:
        list(threads.map(register, range(300)))
    assert len(list_workers(name_server, prefix="ezpool.crowd.")) == 300


# --- the name server over TLS ------------------------------------------------------------




def test_a_name_server_over_tls_serves_list_workers_registrations_and_pyroname(
    serve, start_daemon, certificates
):
    from ezpool._worker.registration import Registration
    from ezpool.security import client_tls_context

    d = certificates
    tls = ("--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server-key.pem"))
    port = free_port()
    start_daemon([sys.executable, "-m", "ezpool.nameserver", "--port", str(port), *tls])
    ns = f"127.0.0.1:{port}"
    (uri,) = serve("tests._workers:Square", *tls).uris
    context = client_tls_context(d / "ca.pem")
    keeper = Registration(ns, "ezpool.tls-worker", uri, "ezpool.", user_key(), tls=context)
    keeper.start()
    try:
        assert list_workers(ns, tls_ca=d / "ca.pem") == [uri]
        with Pool(spawn=False, tls_ca=d / "ca.pem") as pool:
            assert pool.dmap(Square, [3], workers=[f"PYRONAME:ezpool.tls-worker@{ns}"]) == {3: 9}
        with pytest.raises(WorkerUnavailable, match=f"name server {ns}"):
            list_workers(ns)  # plain TCP to a name server that speaks TLS
    finally:
        keeper.stop()
    assert list_workers(ns, tls_ca=d / "ca.pem") == []


def test_the_name_server_checks_its_tls_flags(core_child_env, certificates):
    import subprocess

    d = certificates
    for flags, message in [
        (["--tls-cert", str(d / "server.pem")], "--tls-cert and --tls-key go together"),
        (["--tls-ca", str(d / "ca.pem")], "--tls-ca needs --tls-cert"),
        (["--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server-key.pem"),
          "--tls-require-client-cert"], "--tls-require-client-cert needs --tls-ca"),
    ]:
        done = subprocess.run([sys.executable, "-m", "ezpool.nameserver", "--port", str(free_port()), *flags],
                              capture_output=True, text=True, timeout=60, env=core_child_env)
        assert done.returncode == 1 and message in done.stderr, (flags, done.stderr)


def test_serve_registers_with_a_tls_name_server_and_a_tls_client_finds_it(serve, start_daemon, certificates):
    d = certificates
    tls = ("--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server-key.pem"))
    port = free_port()
    name_server = start_daemon([sys.executable, "-m", "ezpool.nameserver", "--port", str(port), *tls])
    ns = f"127.0.0.1:{port}"
    to_ns = ("--ns", ns, "--ns-tls-ca", str(d / "ca.pem"))
    served = serve("tests._workers:Square", *to_ns, *tls, procs=2)  # two free ports in a row
    deadline = time.monotonic() + 30
    while len(list_workers(ns, tls_ca=d / "ca.pem")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    found = list_workers(ns, tls_ca=d / "ca.pem")
    if not (len(found) == 2 and set(served.uris) == set(found)):  # say what they said
        said = {}
        for what, daemon in (("workers", served.process), ("name server", name_server.process)):
            os.killpg(daemon.pid, signal.SIGKILL)
            said[what] = daemon.communicate(timeout=10)[1][-3000:]
        raise AssertionError(f"listed {found}, printed {served.lines}; {said}")
    with Pool(spawn=False, tls_ca=d / "ca.pem") as pool:
        assert pool.dmap(Square, [2, 3], workers=found) == {2: 4, 3: 9}


def test_serve_checks_its_name_server_tls_flags(core_child_env, certificates):
    import subprocess

    d = certificates
    for flags, message in [
        (["--ns-tls-ca", str(d / "ca.pem")], "need --ns"),
        (["--ns", "127.0.0.1:1", "--ns-tls-cert", str(d / "client.pem")], "need --ns-tls-ca"),
    ]:
        done = subprocess.run([sys.executable, "-m", "ezpool.serve", "--port", str(free_port()), *flags],
                              capture_output=True, text=True, timeout=60, env=core_child_env)
        assert done.returncode == 1 and message in done.stderr, (flags, done.stderr)
