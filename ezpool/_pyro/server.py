"""The worker side of a connection: a Pyro4 daemon that trusts no one before the key.

See ``client`` for the exchange. What an unauthenticated peer can cost a worker is
bounded here: it may hold one of at most ``PREAUTH_CONNECTIONS`` waiting slots
(the oldest is dropped when a new one comes), for at most ``PREAUTH_SECONDS``,
and send messages of at most ``PREAUTH_BYTES``. The TLS handshake, if any, runs
in the connection's own thread, never in the accept loop, so a silent peer
stalls no one else. Nothing a peer sends is unpickled by Pyro4 (only ``marshal``
is accepted), and EzPool's own pickles are opened only after a call's MAC was
checked.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import secrets
import select
import socket
import ssl
import threading
import time
from typing import Any, Callable, Optional

import Pyro4
import Pyro4.errors
import Pyro4.socketutil

from .._core.logs import get_logger
from .._core.records import Status
from ..security import same, sign

logger = get_logger(__name__)

__all__ = [
    "Server",
    "configure_worker_process",
    "PREAUTH_CONNECTIONS",
    "PREAUTH_SECONDS",
    "PREAUTH_BYTES",
]

#: Limits of a worker process (``serve`` only): Pyro4 reads these from its global
#: config alone, so they are set once, in the process that serves, never on import.
SERVER_THREADS = 256  # connections served at once
SERVER_IDLE_TIMEOUT = 10.0  # seconds a connection may stay silent mid-request or between requests
MAX_MESSAGE_SIZE = 1 << 30  # bytes: a frame that announces more is refused, not awaited

#: Connections that may wait for authentication at once; the oldest goes first.
PREAUTH_CONNECTIONS = 32
#: Seconds a connection has, from its first byte, to authenticate.
PREAUTH_SECONDS = 5.0
#: The largest message read from a connection that has not authenticated.
PREAUTH_BYTES = 64 * 1024


def configure_worker_process() -> None:
    """Harden this process's Pyro4 daemon against silent, slow or lying clients.

    Called by ``ezpool.serve``'s ``main`` only: the process exists to serve.
    """
    Pyro4.config.THREADPOOL_SIZE = SERVER_THREADS
    Pyro4.config.COMMTIMEOUT = SERVER_IDLE_TIMEOUT
    Pyro4.config.MAX_MESSAGE_SIZE = MAX_MESSAGE_SIZE
    Pyro4.config.SERIALIZERS_ACCEPTED = {"marshal"}


class Server:
    """A hardened Pyro4 daemon serving one ``Servant``, with its request loop in a thread."""

    def __init__(
        self,
        servant: Any,
        host: str,
        port: int,
        name: str,
        hmac_key: Optional[bytes],
        tls: Optional[ssl.SSLContext] = None,
    ) -> None:
        self._daemon = _Daemon(host, port, hmac_key, tls)
        exposed = ExposedServant(servant, self._daemon.sessions, hmac_key)
        self.uri = str(self._daemon.register(exposed, name))
        self._thread = threading.Thread(target=self._daemon.requestLoop, daemon=True, name="ezpool-daemon")
        self._stopped = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, daemon=True, name="ezpool-sweeper")

    def start(self) -> None:
        self._thread.start()
        self._sweeper.start()

    def shutdown(self) -> None:
        self._stopped.set()
        self._daemon.sessions.wake()
        self._daemon.shutdown()
        self._thread.join(5)

    def _sweep(self) -> None:
        while not self._stopped.is_set():
            self._daemon.sessions.sweep(self._stopped)


class _Session:
    __slots__ = ("connection", "nonce", "counter", "authenticated", "due")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.nonce = secrets.token_bytes(16)
        self.counter = 0
        self.authenticated = False
        self.due = time.monotonic() + PREAUTH_SECONDS


class _Sessions:
    """Every connection's nonce and counter, and the queue of those not yet authenticated."""

    def __init__(self) -> None:
        self._lock = threading.Condition()  # notified when a connection starts to wait
        self._all: dict[int, _Session] = {}
        self._waiting: collections.OrderedDict[int, _Session] = collections.OrderedDict()

    def admit(self, connection: Any) -> None:
        session = _Session(connection)
        with self._lock:
            self._all[id(connection)] = session
            self._waiting[id(connection)] = session
            self._lock.notify_all()
            evicted = []
            while len(self._waiting) > PREAUTH_CONNECTIONS:
                evicted.append(self._waiting.popitem(last=False)[1])
        for old in evicted:
            logger.debug("too many connections waiting to authenticate: dropping the oldest")
            _hang_up(old.connection)

    def get(self, connection: Any) -> Optional[_Session]:
        return self._all.get(id(connection))

    def authenticated(self, session: _Session) -> None:
        with self._lock:
            session.authenticated = True
            self._waiting.pop(id(session.connection), None)
        session.connection.preauth_limit = 0

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
                    break
                # The oldest waits longest: it is due first (all get the same time).
                first = next(iter(self._waiting.values()), None)
                self._lock.wait(None if first is None else first.due - now + 0.01)
            else:
                return
        for session in late:
            logger.debug("a connection did not authenticate within %s s: hanging up", PREAUTH_SECONDS)
            _hang_up(session.connection)


class _GuardedConnection(Pyro4.socketutil.SocketConnection):
    """A Pyro4 connection that refuses to read a large message before authentication."""

    preauth_limit = 0

    def recv(self, size: int) -> bytes:
        if self.preauth_limit and size > self.preauth_limit:
            raise Pyro4.errors.ConnectionClosedError(
                f"a message of {size} bytes before authentication (the limit is {self.preauth_limit})"
            )
        return bytes(super().recv(size))


class _Daemon(Pyro4.Daemon):
    """Pyro4's daemon, with admission, deadlines, TLS and nonces added to its handshake."""

    def __init__(self, host: str, port: int, key: Optional[bytes], tls: Optional[ssl.SSLContext]) -> None:
        super().__init__(host=host, port=port)
        self._pyroHmacKey = key
        self._tls = tls
        self.sessions = _Sessions()

    def _handshake(self, conn: Any, denied_reason: Optional[str] = None) -> bool:
        if denied_reason is not None:
            return bool(super()._handshake(conn, denied_reason))
        conn.__class__ = _GuardedConnection
        conn.preauth_limit = PREAUTH_BYTES
        self.sessions.admit(conn)
        if self._tls is not None:
            try:  # in this connection's own thread: a silent peer blocks no one else
                conn.sock = self._tls.wrap_socket(conn.sock, server_side=True)
            except (OSError, ssl.SSLError, ValueError) as exc:
                logger.debug("TLS handshake failed: %s", exc)
                self.sessions.drop(conn)
                return False
        accepted = bool(super()._handshake(conn))
        if not accepted:
            self.sessions.drop(conn)
        return accepted

    def validateHandshake(self, conn: Any, data: Any) -> Any:
        session = self.sessions.get(conn)
        if session is None:
            raise Pyro4.errors.SecurityError("connection not admitted")
        return {"nonce": session.nonce}

    def clientDisconnect(self, conn: Any) -> None:
        self.sessions.drop(conn)


@Pyro4.expose
class ExposedServant:
    """The two calls a client may make: ``auth`` once, then signed ``call`` s."""

    def __init__(self, servant: Any, sessions: _Sessions, key: Optional[bytes]) -> None:
        self._servant = servant
        self._sessions = sessions
        self._key = key
        self._methods: dict[str, Callable[..., Any]] = {
            "hello": servant.hello,
            "ping": servant.ping,
            "load": servant.load,
            "run_chunk": servant.run_chunk,
        }

    def auth(self, nonce: Any, mac: Any) -> Any:
        connection = Pyro4.current_context.client
        session = self._sessions.get(connection)
        if session is None or session.authenticated or not isinstance(nonce, bytes):
            return _hang_up(connection)
        if self._key and not same(mac, sign(self._key, session.nonce, 0, "auth", nonce)):
            logger.debug("a client failed to authenticate")
            return _hang_up(connection)
        self._sessions.authenticated(session)
        logger.debug("a client connected and authenticated")
        return sign(self._key, session.nonce, 0, "auth-ok", nonce)

    def call(self, method: Any, counter: Any, mac: Any, args: Any) -> Any:
        connection = Pyro4.current_context.client
        session = self._sessions.get(connection)
        if session is None or not session.authenticated or not isinstance(counter, int):
            return _hang_up(connection)
        if counter <= session.counter or method not in self._methods or not isinstance(args, (list, tuple)):
            return _hang_up(connection)
        if self._key and not same(mac, sign(self._key, session.nonce, counter, str(method), list(args))):
            logger.debug("a call with a bad signature: hanging up")
            return _hang_up(connection)
        session.counter = counter
        run = self._methods[method]
        result = self._run_chunk(connection, *args) if method == "run_chunk" else run(*args)
        return result, sign(self._key, session.nonce, counter, "reply", result)

    def _run_chunk(self, connection: Any, *args: Any) -> Any:
        # args: a ChunkCall as it travels (ezpool._core.records)
        gone = functools.partial(_peer_closed, connection)
        status, reply = self._servant.run_chunk(*args, client_gone=gone)
        if status == Status.GONE.value:  # the servant has no answer: hang up
            _hang_up(connection)
        return status, reply


def _hang_up(connection: Any) -> None:
    """Close a client's connection from this side; its thread then stops serving it."""
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _peer_closed(connection: Any, seconds: float = 0.0, wake: Optional[int] = None) -> bool:
    """Whether the client at the other end of ``connection`` has hung up, waiting up to
    ``seconds`` for it to, or for the file ``wake`` to become readable.

    A client may have sent its next call already (see ``client.Connection.send``),
    so unread bytes do not mean it is there: where the system says whether the
    peer has closed its side (``POLLRDHUP``, Linux) that is asked, and the wait
    ends the moment it does; elsewhere, after the wait, a peek at the raw TCP
    stream that finds no bytes at all.
    """
    sock = getattr(connection, "sock", None)
    if sock is None:
        return True
    try:
        hangup = getattr(select, "POLLRDHUP", 0)
        if hangup:
            poller = select.poll()
            poller.register(sock, hangup | select.POLLHUP | select.POLLERR)
            if wake is not None:
                poller.register(wake, select.POLLIN)
            events = poller.poll(int(seconds * 1000))
            return any(fd != wake for fd, _ in events)
        if seconds:
            select.select([] if wake is None else [wake], [], [], seconds)
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and socket.socket.recv(sock, 1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
