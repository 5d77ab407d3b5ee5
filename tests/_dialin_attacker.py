"""Attacks on a pool that listens for workers, as another local user would make them.

Run by ``tests/test_attacks_dialin.py`` as uid 65534, with plain Pyro4 and no ezpool.
Subcommands (each prints one JSON line per outcome)::

    fake-worker HOST:PORT --markers DIR
        dial the pool as a worker would; answer its connect message in Pyro4's pickle
        serializer with a payload (``pickled``), then in marshal with a made-up proof
        (``forged``), and report all the pool sent back
    flood HOST:PORT --silent N --mute N --duration S
        N connections that send nothing, and N that read the pool's connect and never
        answer, opened again as the pool hangs them up, for S seconds
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import sys
import time

import Pyro4.message
import Pyro4.util


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _say(kind: str, name: str, ok: bool, detail: str = "") -> None:
    print(json.dumps({"kind": kind, "name": name, "ok": ok, "detail": detail}), flush=True)


def _dial(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            part = self.sock.recv(size - len(data))
            if not part:
                raise ConnectionError("closed")
            data += part
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


def _read(conn: _Conn):
    return Pyro4.message.Message.recv(conn, None, hmac_key=None)


def fake_worker(address: str, markers: str) -> None:
    # 1: answer in the pickle serializer, with a payload that leaves a marker when unpickled.
    sock = _dial(address)
    conn = _Conn(sock)
    hello = _read(conn)
    _say("info", "connect-serializer", True, str(hello.serializer_id))
    pickled = pickle.dumps({"handshake": {"nonce": _Marker(os.path.join(markers, "pickled"))}})
    serializer_id = Pyro4.util.get_serializer("pickle").serializer_id
    reply = Pyro4.message.Message(Pyro4.message.MSG_CONNECTOK, pickled, serializer_id, 0, hello.seq, {}, None)
    conn.send(reply.to_bytes())
    try:
        sock.settimeout(3)
        after = _read(conn)
        _say("attack", "pickled", False, f"the pool went on with message type {after.type}")
    except Exception as exc:
        _say("attack", "pickled", False, f"hung up: {exc}")
    sock.close()
    # 2: answer in marshal with a forged proof, and see what the pool sends next.
    sock = _dial(address)
    conn = _Conn(sock)
    hello = _read(conn)
    marshal = Pyro4.util.get_serializer("marshal")
    data, _ = marshal.serializeData({"nonce": os.urandom(16), "proof": os.urandom(32)}, False)
    ok = Pyro4.message.MSG_CONNECTOK
    reply = Pyro4.message.Message(ok, data, marshal.serializer_id, 0, hello.seq, {}, None)
    conn.send(reply.to_bytes())
    try:
        sock.settimeout(3)
        after = _read(conn)
        call = marshal.deserializeData(after.data)
        _say("info", "after-forged", True, repr(call))
        method, args = call[1], list(call[2]) if len(call) > 2 else []
        signed = any(isinstance(arg, bytes) and len(arg) >= 16 for arg in args)
        _say("attack", "forged", method != "auth" or signed, f"the pool sent {method!r} {args!r}")
    except Exception as exc:
        _say("attack", "forged", False, f"hung up: {exc}")
    sock.close()


def flood(address: str, silent: int, mute: int, duration: float) -> None:
    end = time.monotonic() + duration
    held: list[socket.socket] = []
    opened = 0
    while time.monotonic() < end:
        held = [sock for sock in held if _alive(sock)]
        while len(held) < silent + mute:
            try:
                sock = _dial(address)
            except OSError:
                time.sleep(0.01)
                break
            held.append(sock)
            opened += 1
        time.sleep(0.01)
    _say("info", "flood", True, f"{opened} connections opened")


def _alive(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        data = sock.recv(65536, socket.MSG_PEEK)
        if data == b"":
            sock.close()
            return False
        sock.recv(65536)  # the pool's connect message: read, never answered
        return True
    except BlockingIOError:
        return True
    except OSError:
        sock.close()
        return False


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    fake = commands.add_parser("fake-worker")
    fake.add_argument("address")
    fake.add_argument("--markers", required=True)
    many = commands.add_parser("flood")
    many.add_argument("address")
    many.add_argument("--silent", type=int, default=100)
    many.add_argument("--mute", type=int, default=100)
    many.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    if args.command == "fake-worker":
        fake_worker(args.address, args.markers)
    else:
        flood(args.address, args.silent, args.mute, args.duration)


if __name__ == "__main__":
    sys.exit(main())
