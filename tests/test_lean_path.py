"""The lean server path (``ezpool._pyro.lean``): once a connection has proven the key, its
calls are read and answered without Pyro4's per-request machinery, and every check holds.

Real ``python -m ezpool.serve`` workers on 127.0.0.1. The "attacker" here speaks
Pyro4's wire format by hand over a raw socket, so that it can send what no
EzPool client sends: calls before ``auth``, calls signed with another key or for
another connection, pickles in Pyro4's pickle serializer, messages announcing a
gigabyte. Its proof of success would be a directory that a pickle makes when it is
loaded (``os.mkdir``); a call that is allowed to load it shows that the proof works.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import pickle
import secrets
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import ezpool
from ezpool.security import resolve_key, sign
from tests import _workers as w
from tests.conftest import REPO_ROOT, Served, free_port, read_lines, stop_group

pytestmark = pytest.mark.timeout(90)

#: Runs ``ezpool.serve`` with ``argv[1:]`` after wrapping, for observation only, Pyro4's
#: own request handler and ``uuid.uuid4`` (which Pyro4 calls for every request it
#: handles): each entry appends a line to the file ``argv[1]``.
COUNTING = """
import runpy, sys, uuid
import Pyro4.core
log = open(sys.argv.pop(1), "a", buffering=1)
uuid4, handle = uuid.uuid4, Pyro4.core.Daemon.handleRequest
def counted_uuid4():
    log.write("uuid4\\n")
    return uuid4()
def counted_handle(self, conn):
    log.write("pyro\\n")
    return handle(self, conn)
uuid.uuid4, Pyro4.core.Daemon.handleRequest = counted_uuid4, counted_handle
sys.argv[0] = "ezpool-serve"
runpy.run_module("ezpool.serve", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def counting(core_child_env, tmp_path):
    """``counting(*serve_args, expect=1)``: a served worker whose Pyro4 request handling and
    ``uuid4`` calls are counted; ``(Served, counts)``, ``counts()`` being ``{"pyro": n, "uuid4": n}``."""
    started = []
    log = tmp_path / "counted.log"

    def start(*args: str, expect: int = 1) -> tuple[Any, Any]:
        command = [sys.executable, "-c", COUNTING, str(log), *args]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=core_child_env, start_new_session=True, cwd=REPO_ROOT)
        started.append(process)
        lines = read_lines(process, expect, command) if expect else []

        def counts() -> dict[str, int]:
            text = log.read_text() if log.exists() else ""
            return {kind: text.split().count(kind) for kind in ("pyro", "uuid4")}

        return Served(process, lines), counts

    yield start
    for process in started:
        stop_group(process)


def _port(uri: str) -> int:
    return int(uri.rsplit(":", 1)[1])


def test_a_keyed_connection_s_calls_never_enter_pyro4_s_request_handling(counting):
    served, counts = counting("tests._workers:Square", "--port", str(free_port()))
    (uri,) = served.uris
    from ezpool import _pyro

    connection = _pyro.Connection(_pyro.parse_uri(uri), resolve_key(), 10.0)
    try:
        connection.open()  # the handshake and auth: Pyro4 handles auth
        before = counts()
        assert before["pyro"] >= 1, "harness: Pyro4's handler was not counted"
        for _ in range(20):
            connection.call("ping")
        assert connection.call("hello")["serves"] == "Square"
        assert connection.call("status")["pid"] == served.process.pid
        assert counts() == before  # no request went through Pyro4's handler, none drew a uuid4
    finally:
        connection.close()
    with ezpool.Pool() as pool:
        before = counts()
        results = pool.dmap(w.Square, range(60), workers=[uri], spawn=False, chunksize=1, progress=False)
        assert dict(results) == {x: x * x for x in range(60)}
        after = counts()
    # 60 chunks, each a request; Pyro4 handles only each new connection's auth.
    assert after["pyro"] - before["pyro"] <= 3, (before, after)
    assert after["uuid4"] - before["uuid4"] <= 3, (before, after)


def test_a_worker_that_dials_in_takes_the_lean_path_too(counting, tmp_path):
    listen_file = tmp_path / "pool.json"
    _, counts = counting("--connect", str(listen_file), expect=0)
    with ezpool.Pool(mode="distributed", listen="127.0.0.1:0", listen_file=listen_file) as pool:
        results = pool.map(abs, range(-40, 0), chunksize=1, progress=False)
        assert dict(results) == {x: -x for x in range(-40, 0)}
        counted = counts()
    assert counted["pyro"] <= 4 and counted["uuid4"] <= 4, counted  # the auths, not the 40 chunks


# --- what a peer can send by hand -------------------------------------------------------------

_INVOKE, _CONNECT, _MARSHAL, _PICKLE = 4, 1, 3, 4


class _Mkdir:
    """Pickles to a call of ``os.mkdir(path)``: the proof that a pickle was loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> Any:
        return os.mkdir, (self.path,)


class _Raw:
    """A connection to a worker spoken by hand, in Pyro4's wire format."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 10.0)
        self.seq = 0
        self.counter = 0
        hello = marshal.dumps({"handshake": "ezpool", "object": "worker"})
        self.sock.sendall(self.frame(hello, kind=_CONNECT))
        answer = self.read()
        self.nonce = (answer.get("handshake", answer))["nonce"]

    def frame(self, data: bytes, kind: int = _INVOKE, serializer: int = _MARSHAL, size: int = -1) -> bytes:
        self.seq += 1
        size = len(data) if size < 0 else size
        checksum = (kind + 48 + size + serializer + self.seq + 0x34E9) & 0xFFFF
        header = struct.pack("!4sHHHHiHHHH", b"PYRO", 48, kind, 0, self.seq, size, serializer, 0, 0, checksum)
        return header + data

    def send(self, method: str, args: list[Any]) -> None:
        self.sock.sendall(self.frame(marshal.dumps(("worker", method, args, {}))))

    def read(self) -> Any:
        """The next answer; ``EOFError`` if the worker hung up."""
        return marshal.loads(self.read_raw())

    def read_raw(self) -> bytes:
        """The next answer's data, not decoded; ``EOFError`` if the worker hung up."""
        header = self._exactly(24)
        size, anns = struct.unpack("!i", header[12:16])[0], struct.unpack("!H", header[18:20])[0]
        self._exactly(anns)
        return self._exactly(size)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            more = self.sock.recv(size - len(data))
            if not more:
                raise EOFError("the worker hung up")
            data += more
        return data

    def auth(self, key: bytes) -> None:
        mine = secrets.token_bytes(16)
        self.send("auth", [mine, sign(key, self.nonce, 0, "auth", mine)])
        assert self.read() == sign(key, self.nonce, 0, "auth-ok", mine)

    def call(self, key: bytes, method: str, args: list[Any], nonce: bytes = b"") -> None:
        self.counter += 1
        mac = sign(key, nonce or self.nonce, self.counter, method, args)
        self.send("call", [method, self.counter, mac, args])

    def hung_up(self) -> bool:
        try:
            self.read()
        except (EOFError, ConnectionError):
            return True
        return False

    def close(self) -> None:
        self.sock.close()


def test_nothing_is_unpickled_for_a_peer_that_has_not_proven_the_key(serve, tmp_path):
    (uri,) = serve("tests._workers:Square").uris
    port, key = _port(uri), resolve_key()
    marker = tmp_path / "loaded"
    evil = pickle.dumps([_Mkdir(marker)])  # a chunk of one task, made by os.mkdir
    checker = _Raw(port)
    checker.auth(key)
    checker.call(key, "hello", [])
    identity = checker.read()[0]["identity"]
    chunk = [identity, "f", 0, 1, [evil], None]
    raw = []

    def fresh(authenticated: bool = True) -> _Raw:
        peer = _Raw(port)
        raw.append(peer)
        if authenticated:
            peer.auth(key)
        return peer

    try:
        unproven = fresh(authenticated=False)  # a signed call, with no auth before it
        unproven.call(key, "run_chunk", chunk)
        assert unproven.hung_up()
        other_key = fresh()  # proven, but the call signed with another key
        other_key.call(b"another key of 32 bytes, random!", "run_chunk", chunk)
        assert other_key.hung_up()
        elsewhere = fresh()  # signed with the key, for another connection's nonce
        elsewhere.call(key, "run_chunk", chunk, nonce=checker.nonce)
        assert elsewhere.hung_up()
        for authenticated in (False, True):  # Pyro4's pickle serializer: the whole message a pickle
            pickled = fresh(authenticated)
            pickled.sock.sendall(pickled.frame(evil, serializer=_PICKLE))
            with contextlib.suppress(EOFError, ConnectionError):
                pickled.read_raw()  # Pyro4's refusal (it accepts marshal only), or a hang-up
        huge = fresh()  # a proven peer announcing 2 GiB: refused unread
        huge.sock.sendall(huge.frame(b"", size=0x7FFFFFF0))
        assert huge.hung_up()
        time.sleep(0.5)
        assert not marker.exists(), "a pickle was loaded for a peer that had not proven the key"
        checker.call(key, "run_chunk", chunk)  # the control: the key's holder runs code
        status, _ = checker.read()[0]
        assert status == "ok" and marker.is_dir()
    finally:
        checker.close()
        for peer in raw:
            peer.close()


def test_a_call_that_raises_is_answered_as_pyro4_answers_it(serve):
    (uri,) = serve("tests._workers:Square").uris
    from ezpool import _pyro

    connection = _pyro.Connection(_pyro.parse_uri(uri), resolve_key(), 10.0)
    try:
        with pytest.raises(TypeError):
            connection.call("ping", "an argument too many")
        assert connection.call("ping")[0]  # the connection still serves
    finally:
        connection.close()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_answers_larger_than_what_is_sent_in_place_arrive_whole(serve, tls, request):
    from ezpool._pyro.lean import SEND_IN_PLACE

    flags, options = [], {}
    if tls:
        d = request.getfixturevalue("certificates")
        flags = ["--tls-cert", str(d / "server.pem"), "--tls-key", str(d / "server-key.pem")]
        options = {"tls_ca": d / "ca.pem"}
    (uri,) = serve("tests._workers:Square", *flags).uris
    size = 4 * SEND_IN_PLACE  # one chunk's reply is past SEND_IN_PLACE (about 4 bytes a value)
    with ezpool.Pool(**options) as pool:
        results = pool.dmap(w.Square, range(size), workers=[uri], spawn=False, chunksize=size, progress=False)
    assert len(results) == size and results[size - 1] == (size - 1) ** 2


@pytest.mark.parametrize(
    "reply", [b"", b"x" * 100, secrets.token_bytes(200_000)], ids=["empty", "short", "long"]
)
def test_answers_are_framed_in_marshal_whatever_their_size(reply):
    from ezpool._pyro.lean import encode_answer

    for answer in [(("ok", reply), b"m" * 32), ({"a": [reply]}, b""), (None, b""), ("ok", reply)]:
        assert marshal.loads(b"".join(encode_answer(answer))) == answer


def test_the_bench_compares_the_lean_path_with_pyro4_s(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--repeats", "1", "--only", "lean", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=80, start_new_session=True,
    )
    assert done.returncode == 0, done.stderr
    comparisons = json.loads((out / "results.json").read_text())["comparisons"]
    for name in ("lean", "lean-chunks"):
        record = comparisons[name]
        assert all(entry["status"] == "ok" for entry in record["contenders"].values()), record
        assert record["ratios"] and all(ratio["ratio"] > 0 for ratio in record["ratios"])
        assert set(record["params"]["worker_cpu_us_per_chunk"]) == {"dmap", "dmap, Pyro4's request path"}
