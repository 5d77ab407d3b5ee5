"""Messages between the calling process and a parallel worker, with no copy of their bytes.

A message is its size (8 bytes) and then its bytes, written from any number of
parts in one ``writev``, each straight from its own buffer (a task's pickle in
parts, ``ezpool._core.serialization.Pickled``, holds the very ``bytes`` of a big
argument), and read straight into one buffer of the right size.
``multiprocessing.Connection.recv_bytes`` reads a big message a pipe's worth at
a time, each time into a new object of what remains, then copies it all once
more; a 5 MB argument was copied four times on its way in.

Both ends of a worker's ``Connection`` speak only this; its object is used for
its descriptor, and for ``wait``. The calling process reads replies into one
buffer per worker, kept between replies (``Inbox``): a new buffer of a megabyte
is zeroed and faulted in page by page, which cost about as much as reading it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from ..._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["send", "receive", "Inbox"]

_SIZE = struct.Struct("!Q")

#: The most buffers one ``writev`` takes (Linux's ``IOV_MAX``).
_MOST_VIEWS = 1024

#: The largest buffer an ``Inbox`` keeps; a larger message gets one of its own.
_KEEP = 8 << 20


def send(conn: Connection, parts: Sequence[Any]) -> None:
    """Write one message made of ``parts`` (bytes-like); ``OSError`` if the other end is gone."""
    views = [memoryview(_SIZE.pack(sum(map(len, parts))))]
    views += [memoryview(part).cast("B") for part in parts]
    _write(conn.fileno(), views)


def receive(conn: Connection) -> bytearray:
    """Read one whole message; ``EOFError`` if the other end closed before or during it."""
    fd = conn.fileno()
    head = _read(fd, bytearray(_SIZE.size))
    return _read(fd, bytearray(_SIZE.unpack(head)[0]))


class Inbox:
    """Reads messages from one connection into a buffer it keeps between them."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive(self, conn: Connection) -> memoryview:
        """Read one whole message, as ``receive``; the view is good until the next call."""
        fd = conn.fileno()
        size = _SIZE.unpack(_read(fd, bytearray(_SIZE.size)))[0]
        if size > _KEEP:
            return memoryview(_read(fd, bytearray(size)))
        if size > len(self._buffer):
            self._buffer = bytearray(min(_KEEP, max(size, 2 * len(self._buffer))))
        view = memoryview(self._buffer)[:size]
        _read(fd, view)
        return view


def _write(fd: int, views: list[memoryview]) -> None:
    """Write every view, in as few system calls as it takes: one write of many small
    parts costs the other end one wake-up, where a write each cost it one each."""
    views = [view for view in views if view]
    while views:
        sent = os.writev(fd, views[:_MOST_VIEWS])
        done = 0
        while done < len(views) and sent >= len(views[done]):
            sent -= len(views[done])
            done += 1
        views = views[done:]
        if views and sent:
            views[0] = views[0][sent:]


def _read(fd: int, buffer: Any) -> Any:
    view = memoryview(buffer)
    filled, size = 0, len(view)
    while filled < size:
        got = os.readv(fd, [view[filled:]])
        if not got:
            raise EOFError("the other end closed in the middle of a message" if filled else "closed")
        filled += got
    return buffer
