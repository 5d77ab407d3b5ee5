"""ezpool._pyro: keys by default, TLS, and what an unauthenticated peer can cost a worker.

Real ``ezpool.serve`` workers on 127.0.0.1 and real sockets; the attacks from
another user are in ``test_attacks.py``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ezpool import AuthenticationError, Pool, WorkerUnavailable
from ezpool.security import user_key_file
from tests import _workers as w
from tests.conftest import free_port
from tests.test_serve import _memory_kb


def _port_of(uri: str) -> int:
    return int(uri.rsplit(":", 1)[1])


def test_workers_and_clients_share_the_per_user_key_with_no_set_up(serve):
    uris = serve("tests._workers:Square").uris
    with Pool() as pool:
        assert pool.dmap(w.Square, range(5), workers=uris, spawn=False) == {n: n * n for n in range(5)}
    path = user_key_file()
    assert path.is_file() and path.stat().st_mode & 0o777 == 0o600


def test_a_client_without_the_workers_key_is_refused_saying_so(serve):
    uris = serve("tests._workers:Square").uris
    with Pool() as pool, pytest.raises(AuthenticationError, match="key"):
        pool.dmap(w.Square, [1], workers=uris, spawn=False, hmac_key="another key of 16+ bytes")


def test_insecure_takes_both_sides_and_one_side_alone_is_refused(serve):
    keyless = serve("tests._workers:Square", "--insecure").uris
    keyed = serve("tests._workers:Square").uris
    with Pool() as pool:
        assert pool.dmap(w.Square, [3], workers=keyless, spawn=False, insecure=True) == {3: 9}
        with pytest.raises(AuthenticationError):
            pool.dmap(w.Square, [3], workers=keyless, spawn=False)
        with pytest.raises(AuthenticationError):
            pool.dmap(w.Square, [3], workers=keyed, spawn=False, insecure=True)


@pytest.mark.parametrize("key", ["x", "s3cret", b"\x00" * 15])
def test_weak_keys_are_refused_before_any_work(key, tmp_path):
    from ezpool import SecurityError

    with Pool() as pool, pytest.raises(SecurityError, match="16") as caught:
        pool.dmap(w.Square, [1], workers=[f"PYRO:worker@127.0.0.1:{free_port()}"], hmac_key=key)
    assert str(key) not in str(caught.value) or len(str(key)) < 3


def test_serve_refuses_a_weak_key_in_one_line_that_does_not_show_it(core_child_env):
    env = dict(core_child_env, EZPOOL_HMAC_KEY="s3cret")
    done = subprocess.run(
        [sys.executable, "-m", "ezpool.serve", "tests._workers:Square", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert done.returncode == 1
    assert "EZPOOL_HMAC_KEY" in done.stderr and "s3cret" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_binary_key_with_nul_bytes_works_from_a_key_file(serve, tmp_path):
    key = bytes(range(32))
    path = tmp_path / "binary.key"
    path.write_bytes(key)
    path.chmod(0o600)
    uris = serve("tests._workers:Square", "--hmac-key-file", str(path)).uris
    with Pool() as pool:
        assert pool.dmap(w.Square, [4], workers=uris, spawn=False, hmac_key=key) == {4: 16}


def test_a_worker_the_pool_starts_gets_a_key_of_its_own_never_on_its_command_line():
    port = free_port()
    with Pool() as pool:
        assert pool.dmap(w.Square, [2], workers=[f"PYRO:worker@127.0.0.1:{port}"], spawn=True) == {2: 4}
        (process,) = pool._backends["distributed"]._started.processes.values()
        environ = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
        command = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        given = [item.split(b"=", 1)[1] for item in environ if item.startswith(b"EZPOOL_HMAC_KEY=")]
        assert given and len(given[0]) == 64 and given[0] not in command
        assert given[0] != user_key_file().read_bytes().strip()
        with pytest.raises(AuthenticationError):  # the user's own key does not open it
            Pool().dmap(w.Square, [2], workers=[f"PYRO:worker@127.0.0.1:{port}"], spawn=False)


def test_the_loopback_guard_resolves_names():
    from ezpool.security import is_loopback_host

    assert is_loopback_host("localhost") and is_loopback_host("127.0.0.1")
    assert not is_loopback_host("127.0.0.1.example.invalid")


# --- TLS ------------------------------------------------------------------------------




def test_tls_with_client_certificates_works_and_refuses_clients_without_one(serve, certificates):
    d = certificates
    uris = serve(
        "tests._workers:Square", "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server-key.pem"),
        "--tls-ca", str(d / "ca.pem"), "--tls-require-client-cert",
    ).uris
    files = {"tls_ca": d / "ca.pem", "tls_cert": d / "client.pem", "tls_key": d / "client-key.pem"}
    with Pool(**files) as pool:
        assert pool.dmap(w.Square, range(4), workers=uris, spawn=False) == {n: n * n for n in range(4)}
    with Pool(tls_ca=d / "ca.pem") as pool, pytest.raises((AuthenticationError, WorkerUnavailable)):
        pool.dmap(w.Square, [1], workers=uris, spawn=False)
    with Pool() as pool, pytest.raises((AuthenticationError, WorkerUnavailable)):
        pool.dmap(w.Square, [1], workers=uris, spawn=False)  # plain TCP to a TLS worker


def test_a_silent_connection_does_not_stall_anyone_elses_tls_handshake(serve, certificates):
    d = certificates
    uris = serve(
        "tests._workers:Square", "--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server-key.pem"),
    ).uris
    silent = [socket.create_connection(("127.0.0.1", _port_of(uris[0])), timeout=5) for _ in range(5)]
    try:
        began = time.monotonic()
        with Pool(tls_ca=d / "ca.pem") as pool:
            assert pool.dmap(w.Square, [6], workers=uris, spawn=False) == {6: 36}
        assert time.monotonic() - began < 5  # not the 10 s a silent peer may hold a socket
    finally:
        for sock in silent:
            sock.close()


# --- what an unauthenticated peer can cost --------------------------------------------


def _connect_header(data_size: int) -> bytes:
    from Pyro4 import message

    from tests.test_serve import _pyro_header

    return _pyro_header(message.MSG_CONNECT, data_size)


@pytest.mark.timeout(90)
def test_keyless_floods_cost_little_and_keyed_clients_are_still_served(serve):
    served = serve("tests._workers:Square")
    port = _port_of(served.uris[0])
    before = _memory_kb(served.process.pid)
    flood = []
    try:
        for n in range(120):  # more than may wait for authentication at once
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if n % 40 == 0:
                sock.sendall(_connect_header(400 * 1024 * 1024) + b"\0" * 4096)
            flood.append(sock)
        began = time.monotonic()
        with Pool() as pool:
            assert pool.dmap(w.Square, range(10), workers=served.uris, spawn=False) == {
                n: n * n for n in range(10)
            }
        assert time.monotonic() - began < 30
        assert _memory_kb(served.process.pid) - before < 50 * 1024
        # The oldest waiting connections were dropped to make room; all go within seconds.
        deadline = time.monotonic() + 15
        open_ones = flood
        while open_ones and time.monotonic() < deadline:
            open_ones = [sock for sock in open_ones if not _closed_by_peer(sock)]
            time.sleep(0.2)
        assert not open_ones, f"{len(open_ones)} unauthenticated connections outlived their deadline"
    finally:
        for sock in flood:
            sock.close()


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# --- calls sent before the last is answered -------------------------------------------


@pytest.mark.timeout(60)
def test_a_call_sent_behind_another_is_answered_in_order_even_when_neither_fits_a_socket(serve):
    """A second call waits at the worker while the first runs. Both carry 8 MB and the
    first answers 8 MB: were the second sent whole at once, the client would wait for
    the worker to read it while the worker waits for the client to read its answer."""
    from ezpool import _pyro
    from ezpool._core.records import ChunkReply
    from ezpool._core.serialization import dumps_tasks
    from ezpool.security import resolve_key

    (uri,) = serve("tests._workers:Mirror").uris
    connection = _pyro.Connection(_pyro.parse_uri(uri), resolve_key(), None)
    try:
        identity = connection.call("hello")["identity"]
        big = [bytes([n]) * (8 << 20) for n in (1, 2)]
        tickets = [
            connection.send("run_chunk", identity, "", n, 1, [b"".join(dumps_tasks([big[n]]))], None,
                            queued=n > 0)
            for n in (0, 1)
        ]
        answers = [connection.receive(ticket) for ticket in tickets]
        for n, (status, reply) in enumerate(answers):
            first, values, _, failures, _ = ChunkReply.decode(reply)
            assert (status, first, failures) == ("ok", n, {}) and values == [big[n]]
        assert connection.call("ping")[0] == identity  # and the connection is still in step
    finally:
        connection.close()


def test_an_answer_asked_for_out_of_order_closes_the_connection(serve):
    from ezpool import _pyro
    from ezpool.security import resolve_key

    (uri,) = serve("tests._workers:Square").uris
    connection = _pyro.Connection(_pyro.parse_uri(uri), resolve_key(), None)
    try:
        first = connection.send("ping")
        second = connection.send("ping", queued=True)
        with pytest.raises(_pyro.ConnectionClosed):
            connection.receive(second)
        assert not connection.is_open
        with pytest.raises(_pyro.ConnectionClosed):
            connection.receive(first)  # lost with the connection: never a stale answer
    finally:
        connection.close()
