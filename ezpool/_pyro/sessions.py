"""What a server knows of each connection, and what an unauthenticated one may cost it.

Every connection a ``server._Daemon`` accepts becomes a ``Session``: its own random
nonce, the counter of its signed calls, and, until it authenticates, a place in
a queue of those that wait. At most ``Limits.connections`` may wait at once
(when one more comes, one that stands still is dropped: see ``Sessions``), each
for at most ``Limits.seconds`` from the moment it was accepted, TLS handshake
included, and none may send a message larger than ``Limits.bytes`` before it
has authenticated. Dropping a connection hangs up the socket it is using now:
the plain one, or the TLS one that wraps it, mid-handshake or not.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import select
import socket
import threading
import time
from typing import Any, NamedTuple, Optional

import Pyro4.errors
import Pyro4.message
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
    "first_message",
    "PREAUTH_CONNECTIONS",
    "PREAUTH_SECONDS",
    "PREAUTH_BYTES",
]

#: Connections that may wait for authentication at once (a worker); see ``Sessions``.
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

    __slots__ = ("connection", "nonce", "counter", "authenticated", "dropped", "due", "dialed", "refused")

    def __init__(self, connection: Any, seconds: float) -> None:
        self.connection = connection
        self.nonce = secrets.token_bytes(16)
        self.counter = 0
        self.authenticated = False
        self.dropped = False  # hung up on for waiting too long, or to make room
        self.due = time.monotonic() + seconds
        self.dialed = False  # this side dialed the peer (a worker dialing in to its pool)
        self.refused = ""  # what the pool this side dialed answered its proof of the key, if it refused

    def seconds_left(self) -> float:
        return self.due - time.monotonic()


class Sessions:
    """Every connection's session, and the queues of those not yet authenticated.

    A connection that has not authenticated waits in one of two queues: ``idle``
    until its first message (a TLS ClientHello, or Pyro4's connect) is in (looked
    at by its own thread, or at the moment it would be dropped), then ``busy``,
    where it goes to the back at each step it takes (the first message,
    the TLS handshake, the connect answered). Past the cap, the oldest idle one is
    dropped first, then the busy one that has stood still longest: a client that
    answers at once is never dropped to make room for peers that are silent or
    drip bytes, however many they are.
    """

    def __init__(self, limits: Limits = WORKER_LIMITS, tls: bool = False) -> None:
        self.limits = limits
        self._tls = tls  # what a first message starts with: a TLS record, or Pyro4's header
        self._lock = threading.Condition()  # notified when a connection starts to wait
        self._all: dict[int, Session] = {}
        self._idle: collections.OrderedDict[int, Session] = collections.OrderedDict()
        self._busy: collections.OrderedDict[int, Session] = collections.OrderedDict()

    def admit(self, connection: Any) -> Session:
        """A new connection's session; past the cap, waiting ones are dropped (see above)."""
        session = Session(connection, self.limits.seconds)
        with self._lock:
            self._all[id(connection)] = session
            self._idle[id(connection)] = session
            self._lock.notify_all()
            evicted = []
            while len(self._idle) + len(self._busy) > self.limits.connections:
                if not self._idle:
                    evicted.append(self._busy.popitem(last=False)[1])
                    continue
                key, old = self._idle.popitem(last=False)
                if self._has_spoken(old):  # its thread has not looked yet: it is busy
                    self._busy[key] = old
                else:
                    evicted.append(old)
        for old in evicted:
            logger.debug("too many connections waiting to authenticate: dropping one that stands still")
            old.dropped = True
            hang_up(old.connection)
        return session

    def get(self, connection: Any) -> Optional[Session]:
        return self._all.get(id(connection))

    def _has_spoken(self, session: Session) -> bool:
        """Whether an idle connection's first message is in, though its thread (held up
        while others run) has not seen it yet."""
        sock = getattr(session.connection, "sock", None)
        try:
            return sock is not None and _first_message_in(sock, self._tls)[0] is True
        except (OSError, ValueError):
            return False

    def progressed(self, session: Session) -> None:
        """``session`` took a step towards authenticating: to the back of the busy queue."""
        key = id(session.connection)
        with self._lock:
            if self._idle.pop(key, None) is not None:
                self._busy[key] = session
            elif key in self._busy:
                self._busy.move_to_end(key)

    def authenticated(self, session: Session) -> bool:
        """Mark ``session`` authenticated; ``False`` if it was dropped meanwhile."""
        key = id(session.connection)
        with self._lock:
            waited = self._busy.pop(key, None) or self._idle.pop(key, None)
            if session.dropped or waited is None:
                return False
            session.authenticated = True
        session.connection.preauth_limit = 0
        return True

    def drop(self, connection: Any) -> None:
        with self._lock:
            self._all.pop(id(connection), None)
            self._idle.pop(id(connection), None)
            self._busy.pop(id(connection), None)

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
                waiting = [*self._idle.values(), *self._busy.values()]
                late = [session for session in waiting if session.due < now]
                if late:
                    for session in late:  # hung up on below: they wait for nothing more
                        self._idle.pop(id(session.connection), None)
                        self._busy.pop(id(session.connection), None)
                        session.dropped = True
                    break
                first = min((session.due for session in waiting), default=None)
                self._lock.wait(None if first is None else first - now + 0.01)
            else:
                return
        for session in late:
            logger.debug("a connection did not authenticate within %s s: hanging up", self.limits.seconds)
            hang_up(session.connection)


#: The most of a first message that must be in before a connection counts as busy.
FIRST_BYTES = 4096
#: Sizes of the headers that say how long a first message is: a TLS record's, Pyro4's.
_TLS_HEADER, _PYRO_HEADER = 5, 24


def first_message(sock: socket.socket, session: Session, tls: bool) -> bool:
    """Wait, within ``session``'s time, until the peer's first message is in this side's
    buffer (its first ``FIRST_BYTES`` at least), without reading it; ``False`` if the
    peer closed, was hung up on, ran out of time, or sent something that is not the
    start of a TLS record (``tls``) or of a Pyro4 message.

    Where the system cannot say that the peer hung up (no ``POLLRDHUP``), this does
    not wait: the connection counts as busy at once.
    """
    rdhup = getattr(select, "POLLRDHUP", 0)
    if not rdhup:
        return True
    try:
        while True:
            complete, needed = _first_message_in(sock, tls)
            if complete is not None:
                return complete
            left = session.seconds_left()
            if left <= 0 or session.dropped:
                return False
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, needed)  # wake when it is all in
            poller = select.poll()
            poller.register(sock, select.POLLIN | rdhup)
            events = poller.poll(int(left * 1000) + 1)
            if not events or any(event & (rdhup | select.POLLHUP | select.POLLERR) for _, event in events):
                return False
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


def _first_message_in(sock: Any, tls: bool) -> tuple[Optional[bool], int]:
    """Whether the peer's first message is in ``sock``'s buffer, looked at without reading
    or waiting: ``(True, _)`` yes, ``(False, _)`` it is not one, ``(None, bytes)`` not yet,
    and how many bytes must be in before it is worth looking again."""
    needed = _TLS_HEADER if tls else _PYRO_HEADER
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        # Asked first: a socket with a time-out waits for data before it peeks.
        peeked = socket.socket.recv(sock, needed, socket.MSG_PEEK) if poller.poll(0) else b""
        if len(peeked) < needed:
            return None, needed
        length = _message_length(peeked, tls)
        if length is None:
            return False, needed
        if min(length, FIRST_BYTES) <= needed:
            return True, needed
        needed = min(length, FIRST_BYTES)


def _message_length(header: bytes, tls: bool) -> Optional[int]:
    """The length of the message that ``header`` starts, or ``None`` if it starts none."""
    if tls:
        if header[0] != 0x16:  # a TLS handshake record
            return None
        return _TLS_HEADER + int.from_bytes(header[3:5], "big")
    try:
        message = Pyro4.message.Message.from_header(header[:_PYRO_HEADER])
    except Pyro4.errors.PyroError:
        return None
    return _PYRO_HEADER + message.annotations_size + message.data_size


class GuardedConnection(Pyro4.socketutil.SocketConnection):
    """A Pyro4 connection that refuses to read a large message before authentication,
    that can be told to hang up once its next message is sent (a refusal), and that
    can be given back bytes read from it, to be read again (``replay``: a message the
    lean path leaves to Pyro4, see ``lean``)."""

    preauth_limit = 0
    hang_up_after_send = False
    replayed = b""  # read again before anything more is read from the socket
    peer = ""  # the client's address as ``host:port``, once asked (``server.worker_methods``)

    def recv(self, size: int) -> bytes:
        if self.preauth_limit and size > self.preauth_limit:
            raise Pyro4.errors.ConnectionClosedError(
                f"a message of {size} bytes before authentication (the limit is {self.preauth_limit})"
            )
        if self.replayed:
            again, self.replayed = self.replayed[:size], self.replayed[size:]
            return again if len(again) == size else again + bytes(super().recv(size - len(again)))
        return bytes(super().recv(size))

    def replay(self, data: bytes) -> None:
        """Make ``data``, just read, the next bytes read."""
        self.replayed = data + self.replayed

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
