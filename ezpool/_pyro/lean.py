"""The lean path: the signed calls of a connection that has proven the key, read and
answered in Pyro4's wire format without Pyro4's request machinery.

For every request, Pyro4's daemon does what EzPool's calls never use: a ``uuid4``
correlation id (sent back in every answer), ``getpeername``, eight thread-local
assignments (``current_context``), its generic serializer with its class
re-creation, a look-up of the method through its exposure checks, a check for
streamed results, and an answer copied whole into one message. On tiny chunks
that was about half of a served worker's CPU. Once a connection has proven the
key, every message it should send is an EzPool ``call`` (``server.ExposedServant``),
so ``server._Daemon.handleRequest`` reads it here::

    a request on a connection (its thread: Pyro4's ClientConnectionJob)
      ├─ not authenticated ─────────────────────▶ Pyro4's own handleRequest, unchanged
      │                                           (auth, Pyro4's own objects, refusals)
      └─ authenticated: read_call
           ├─ anything but a plain marshal ``call`` ──▶ put back, unread by anyone
           │  of the served object (a ping, flags,        (GuardedConnection.replay),
           │  annotations, another object or method)      for Pyro4's own handleRequest
           └─ ExposedServant.invoke (the MAC, the counter, the method: the same
              code as on Pyro4's path) ─▶ send_reply, or Pyro4's exception answer

What is checked is what Pyro4 checks: the header's tag, protocol version and
checksum, the largest message (``MAX_MESSAGE_SIZE``), the serializer (``marshal``
only; nothing here ever unpickles), and a message signed with Pyro4's own HMAC
goes to Pyro4, which refuses it. The bytes on the wire are Pyro4's, so clients
see no difference, but that answers carry no correlation id.
"""

from __future__ import annotations

import marshal
import socket
import ssl
import struct
from typing import Any, Optional

import Pyro4
import Pyro4.constants
import Pyro4.errors
import Pyro4.message
import Pyro4.util

from .._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["read_call", "send_reply", "encode_answer"]

_HEADER = struct.Struct(Pyro4.message.Message.header_format)
_HEADER_SIZE = _HEADER.size
_VERSION = Pyro4.constants.PROTOCOL_VERSION
_MAGIC = Pyro4.message.Message.checksum_magic
_INVOKE = Pyro4.message.MSG_INVOKE
_RESULT = Pyro4.message.MSG_RESULT
_MARSHAL = Pyro4.util.MarshalSerializer.serializer_id
_LENGTH = struct.Struct("<i")

#: Answers whose bytes are at least this long are sent where they lie, never copied
#: into one message (``encode_answer``).
SEND_IN_PLACE = 64 * 1024


def read_call(conn: Any, object_id: str) -> Optional[tuple[int, list[Any]]]:
    """The sequence number and the arguments of the ``call`` of ``object_id`` that comes
    next on ``conn``; ``None`` when the message is anything else, which is then put back
    whole (``conn.replay``) for Pyro4's own ``handleRequest`` to read and answer."""
    header = conn.recv(_HEADER_SIZE)
    tag, version, kind, flags, seq, size, serializer, annotations, _, checksum = _HEADER.unpack(header)
    limit = Pyro4.config.MAX_MESSAGE_SIZE
    if (
        kind != _INVOKE or flags or serializer != _MARSHAL or annotations or tag != b"PYRO"
        or version != _VERSION or size < 0 or 0 < limit < size
        or checksum != (kind + version + size + annotations + flags + serializer + seq + _MAGIC) & 0xFFFF
    ):
        conn.replay(header)  # Pyro4 refuses it, answers it, or hangs up, as it always did
        return None
    data = conn.recv(size)
    try:
        call = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        call = None
    if (
        type(call) is not tuple or len(call) != 4 or call[1] != "call" or call[0] != object_id
        or type(call[2]) is not list or call[3] != {}
    ):
        conn.replay(header + data)
        return None
    return seq, call[2]


def encode_answer(answer: Any) -> list[bytes]:
    """``answer`` in ``marshal``, as parts to send one after the other.

    The usual answer, ``((status, reply), mac)`` with a long ``reply`` (a chunk's
    pickled outcome), is framed around ``reply`` so that its bytes are never copied;
    ``marshal.loads`` of the parts joined gives ``answer`` back.
    """
    if type(answer) is tuple and len(answer) == 2:
        result, mac = answer
        if (
            type(result) is tuple and len(result) == 2 and type(result[0]) is str
            and type(result[1]) is bytes and len(result[1]) >= SEND_IN_PLACE and type(mac) is bytes
        ):
            status, reply = result
            head = b"(\x02\x00\x00\x00(\x02\x00\x00\x00" + marshal.dumps(status, 2) + b"s"
            return [head + _LENGTH.pack(len(reply)), reply, marshal.dumps(mac, 2)]
    return [marshal.dumps(answer)]


def send_reply(conn: Any, seq: int, answer: Any) -> None:
    """Send ``answer`` to the call ``seq`` on ``conn``, as Pyro4 would (without its
    correlation id)."""
    parts = encode_answer(answer)
    size = sum(map(len, parts))
    if 0 < Pyro4.config.MAX_MESSAGE_SIZE < size:  # as Pyro4's Message refuses it
        raise Pyro4.errors.MessageTooLargeError(
            f"max message size exceeded ({size} where max={Pyro4.config.MAX_MESSAGE_SIZE})"
        )
    checksum = (_RESULT + _VERSION + size + _MARSHAL + seq + _MAGIC) & 0xFFFF
    header = _HEADER.pack(b"PYRO", _VERSION, _RESULT, 0, seq, size, _MARSHAL, 0, 0, checksum)
    if len(parts) == 1:
        conn.send(header + parts[0])
    else:
        _send_parts(conn, [header, *parts])


def _send_parts(conn: Any, parts: list[bytes]) -> None:
    """Send ``parts`` one after the other on ``conn``'s socket, with one system call where
    it takes them all; errors as Pyro4's own sending raises them."""
    sock = conn.sock
    if isinstance(sock, ssl.SSLSocket):  # no scatter-gather through TLS
        conn.send(b"".join(parts))
        return
    views = [memoryview(part) for part in parts]
    try:
        while views:
            sent = sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if views and sent:
                views[0] = views[0][sent:]
    except socket.timeout:
        raise Pyro4.errors.TimeoutError("sending: timeout") from None
    except OSError as exc:
        raise Pyro4.errors.ConnectionClosedError(f"sending: connection lost: {exc}") from None
