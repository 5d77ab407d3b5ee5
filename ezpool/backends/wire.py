"""Messages between the calling process and a parallel worker, with no copy of their bytes.

A message is its size (8 bytes) and then its bytes, written from any number of
parts, each straight from its own buffer (``ezpool.serialization.Pickled``: the
very ``bytes`` of a big task or value), and read straight into one buffer of
the right size. ``multiprocessing.Connection.recv_bytes`` reads a big message a
pipe's worth at a time, each time into a new object of what remains, then copies
it all once more; a 5 MB argument was copied four times on its way in.

Both ends of a worker's ``Connection`` speak only this; its object is used for
its descriptor, and for ``wait``.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["send", "receive"]

_SIZE = struct.Struct("!Q")


def send(conn: Connection, parts: Sequence[Any]) -> None:
    """Write one message made of ``parts`` (bytes-like); ``OSError`` if the other end is gone."""
    fd = conn.fileno()
    _write(fd, _SIZE.pack(sum(map(len, parts))))
    for part in parts:
        _write(fd, part)


def receive(conn: Connection) -> bytearray:
    """Read one whole message; ``EOFError`` if the other end closed before or during it."""
    fd = conn.fileno()
    head = _read(fd, bytearray(_SIZE.size))
    return _read(fd, bytearray(_SIZE.unpack(head)[0]))


def _write(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def _read(fd: int, buffer: bytearray) -> bytearray:
    view = memoryview(buffer)
    filled, size = 0, len(buffer)
    while filled < size:
        got = os.readv(fd, [view[filled:]])
        if not got:
            raise EOFError("the other end closed in the middle of a message" if filled else "closed")
        filled += got
    return buffer
