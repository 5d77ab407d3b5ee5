"""How one call's chunks go out to the worker processes and what comes back: the request,
the last reply of a process that died, the function published, and the wakers that cut a
wait on the pipes short (tasks arriving in a live source, stops asked from another thread).
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FunctionType
from typing import Any, Optional

from ..._core.chunking import Chunk
from ..._core.feed import Live
from ..._core.logs import get_logger
from ..._core.parcels import Parcel, Shelf
from ..._core.records import ChunkRequest
from ..._core.serialization import dumps, short_repr
from ..._core.tasks import bind
from . import pipes
from .processes import WorkerProcess

logger = get_logger(__name__)

__all__ = ["Alarm", "Waker", "forget", "main_functions", "publish", "send_request", "sent_reply"]

#: A piece of tasks in one part smaller than this rides inside the request; a
#: larger one follows it, part by part (see ``send_request``).
_INLINE = 1 << 16


class Waker:
    """Wakes the caller's ``wait`` on the pipes when tasks arrive in a live source."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.handle, self._poke = socket.socketpair()
        self.handle.setblocking(False)
        self._poke.setblocking(False)
        self.watching = False  # whether the caller's wait includes the handle now
        live.add_waker(self._wake)

    def _wake(self) -> bool:
        with contextlib.suppress(OSError):  # full (it will wake anyway) or closed (the call ended)
            self._poke.send(b"!")
        return self.watching

    def clear(self) -> None:
        try:
            while self.handle.recv(4096):
                pass
        except OSError:
            pass

    def wait(self) -> None:
        self.live.wait()

    def close(self) -> None:
        self.live.remove_waker(self._wake)
        self.handle.close()
        self._poke.close()


def main_functions() -> dict[str, Any]:
    """The functions of ``__main__`` now, by name."""
    found = vars(sys.modules["__main__"]) if "__main__" in sys.modules else {}
    return {name: value for name, value in found.items() if isinstance(value, FunctionType)}


def publish(
    shelf: Shelf, fun: Callable[..., Any], context: Any, workers: int, main: Optional[str] = None
) -> Parcel:
    """The parcel of ``fun`` bound to ``context``; a ``TypeError`` naming what cannot be sent."""
    try:
        return shelf.publish(bind(fun, context), workers, main)
    except TypeError as exc:
        if context is not None:
            try:
                dumps(context)
            except Exception as error:
                raise TypeError(
                    f"cannot send the context {short_repr(context)} to another process: {error}"
                ) from error
            raise TypeError(f"cannot send {fun!r} to another process: {exc.__cause__}") from exc.__cause__
        raise


def send_request(
    conn: Connection, fid: str, parcel: Optional[Parcel], chunk: Chunk, exact: bool, level: Optional[int]
) -> None:
    """Send a chunk as ``child.main`` reads it: a ``ChunkRequest`` (as a tuple) whose
    pieces are their pickles when small, or else ``None``, each pickle then following
    as a message of its own."""
    payloads = chunk.payloads
    pieces = [parts[0] if len(parts) == 1 and len(parts[0]) < _INLINE else None for parts in payloads]
    request = ChunkRequest(fid, parcel, chunk.start, chunk.stop, exact, pieces, level)
    pipes.send(conn, [dumps(tuple(request))])
    for parts, piece in zip(payloads, pieces):
        if piece is None:
            pipes.send(conn, parts)


def sent_reply(proc: WorkerProcess) -> Optional[memoryview]:
    """A whole reply that a dead process left in its pipe, if there is one."""
    try:
        return proc.inbox.receive(proc.conn) if proc.conn.poll(0) else None
    except (EOFError, OSError):
        return None


def forget(busy: dict[Any, Any], proc: WorkerProcess) -> None:
    """Stop watching a process's pipe and sentinel."""
    for handle in (proc.conn, proc.process.sentinel):
        busy.pop(handle, None)



class Alarm:
    """A socket pair whose ``handle`` becomes readable when ``ring`` is called, from any
    thread: it cuts the caller's ``wait`` on the pipes short (a stop was asked)."""

    def __init__(self) -> None:
        self.handle, self._bell = socket.socketpair()
        self.handle.setblocking(False)
        self._bell.setblocking(False)

    def ring(self) -> None:
        with contextlib.suppress(OSError):  # full (it will wake anyway) or closed (the call ended)
            self._bell.send(b"!")

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            while self.handle.recv(4096):
                pass

    def close(self) -> None:
        self.handle.close()
        self._bell.close()
