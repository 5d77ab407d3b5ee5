"""What a server knows of each connection, and what an unauthenticated one may cost it.

Every connection a ``server._Daemon`` accepts becomes a ``Session``: its own random
nonce, the counter of its signed calls, and, until it authenticates, a place in
the queue of those that wait. At most ``Limits.connections`` may wait at once
(the oldest is dropped when one more comes), each for at most ``Limits.seconds``
from the moment it was accepted, TLS handshake included, and none may send a
message larger than ``Limits.bytes`` before it has authenticated. Dropping a
connection hangs up the socket it is using now: the plain one, or the TLS one
that wraps it, mid-handshake or not.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import socket
import threading
import time
from typing import Any, NamedTuple, Optional

import Pyro4.errors
import Pyro4.socketutil

from .._core.logs import get_logger

logger = get_logger(__name__)

__all__ = [
    "Limits",
    "WORKER_LIMITS",
    "Session",
    "Sessions",
    "GuardedConnection",
    "hang_up",
    "PREAUTH_CONNECTIONS",
    "PREAUTH_SECONDS",
    "PREAUTH_BYTES",
]

#: Connections that may wait for authentication at once (a worker); the oldest goes first.
PREAUTH_CONNECTIONS = 32
#: Seconds a connection has, from the moment it is accepted, to authenticate.
PREAUTH_SECONDS = 5.0
#: The largest message read from a connection that has not authenticated.
PREAUTH_BYTES = 64 * 1024


class Limits(NamedTuple):
    """What connections that have not authenticated may cost a server, together and each."""

    connections: int = PREAUTH_CONNECTIONS
    seconds: float = PREAUTH_SECONDS
    bytes: int = PREAUTH_BYTES


#: A worker's limits.
WORKER_LIMITS = Limits()


class Session:
    """One connection: its nonce, its counter, and whether it has authenticated (or is dropped)."""

    __slots__ = ("connection", "nonce", "counter", "authenticated", "dropped", "due")

    def __init__(self, connection: Any, seconds: float) -> None:
        self.connection = connection
        self.nonce = secrets.token_bytes(16)
        self.counter = 0
        self.authenticated = False
        self.dropped = False  # hung up on for waiting too long, or to make room
        self.due = time.monotonic() + seconds

    def seconds_left(self) -> float:
        return self.due - time.monotonic()


class Sessions:
    """Every connection's session, and the queue of those not yet authenticated."""

    def __init__(self, limits: Limits = WORKER_LIMITS) -> None:
        self.limits = limits
        self._lock = threading.Condition()  # notified when a connection starts to wait
        self._all: dict[int, Session] = {}
        self._waiting: collections.OrderedDict[int, Session] = collections.OrderedDict()

    def admit(self, connection: Any) -> Session:
        """A new connection's session; the oldest waiting ones are dropped past the cap."""
        session = Session(connection, self.limits.seconds)
        with self._lock:
            self._all[id(connection)] = session
            self._waiting[id(connection)] = session
            self._lock.notify_all()
            evicted = []
            while len(self._waiting) > self.limits.connections:
                evicted.append(self._waiting.popitem(last=False)[1])
        for old in evicted:
            logger.debug("too many connections waiting to authenticate: dropping the oldest")
            old.dropped = True
            hang_up(old.connection)
        return session

    def get(self, connection: Any) -> Optional[Session]:
        return self._all.get(id(connection))

    def authenticated(self, session: Session) -> bool:
        """Mark ``session`` authenticated; ``False`` if it was dropped meanwhile."""
        with self._lock:
            if session.dropped or self._waiting.pop(id(session.connection), None) is None:
                return False
            session.authenticated = True
        session.connection.preauth_limit = 0
        return True

    def drop(self, connection: Any) -> None:
        with self._lock:
            self._all.pop(id(connection), None)
            self._waiting.pop(id(connection), None)

    def wake(self) -> None:
        """End a ``sweep`` that is waiting (the server stops)."""
        with self._lock:
            self._lock.notify_all()

    def sweep(self, stopped: threading.Event) -> None:
        """Wait until a connection is past its time to authenticate (or ``stopped``), then
        hang up on every such one.

        While no connection waits, this sleeps until one comes: an idle worker (a
        pool may keep 128) wakes for nothing.
        """
        with self._lock:
            while not stopped.is_set():
                now = time.monotonic()
                late = [session for session in self._waiting.values() if session.due < now]
                if late:
                    for session in late:  # hung up on below: they wait for nothing more
                        self._waiting.pop(id(session.connection), None)
                        session.dropped = True
                    break
                # The oldest waits longest: it is due first (all get the same time).
                first = next(iter(self._waiting.values()), None)
                self._lock.wait(None if first is None else first.due - now + 0.01)
            else:
                return
        for session in late:
            logger.debug("a connection did not authenticate within %s s: hanging up", self.limits.seconds)
            hang_up(session.connection)


class GuardedConnection(Pyro4.socketutil.SocketConnection):
    """A Pyro4 connection that refuses to read a large message before authentication,
    and that can be told to hang up once its next message is sent (a refusal)."""

    preauth_limit = 0
    hang_up_after_send = False

    def recv(self, size: int) -> bytes:
        if self.preauth_limit and size > self.preauth_limit:
            raise Pyro4.errors.ConnectionClosedError(
                f"a message of {size} bytes before authentication (the limit is {self.preauth_limit})"
            )
        return bytes(super().recv(size))

    def send(self, data: bytes) -> None:
        super().send(data)
        if self.hang_up_after_send:
            hang_up(self)


def hang_up(connection: Any) -> None:
    """Close a client's connection from this side, from any thread; its thread then stops
    serving it. Whatever socket the connection uses now is shut down at the system's
    level (a TLS socket too, mid-handshake or not), never by its TLS layer."""
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
