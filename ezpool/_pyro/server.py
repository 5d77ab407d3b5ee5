"""The server side of a connection: a Pyro4 daemon that trusts no one before the key.

See ``client`` for the exchange. A ``Server`` serves one table of methods (a
worker's, from ``worker_methods``, or the name server's registry) under one
object name. What an unauthenticated peer can cost it is bounded by ``sessions``:
one of at most ``Limits.connections`` waiting slots (past them, one that stands
still is dropped), for at most ``Limits.seconds`` from the moment it was accepted,
TLS handshake included, and messages of at most ``Limits.bytes``. The TLS
handshake, if any, runs in the connection's own thread, never in the accept
loop, on a socket the deadline and the cap can hang up, so a silent or slow peer
stalls no one else. Nothing a peer sends is unpickled by Pyro4 (only ``marshal``
is accepted), and EzPool's own pickles are opened only after a call's MAC was
checked.

A worker that dials in to its pool (``serve_dialed``) serves the connection it
opened exactly as one it accepted, with one difference: whoever dials proves the
key first. The pool's connect message carries a fresh nonce of the pool's, and the
worker answers with its own nonce and a MAC over both (label ``dial-in``); the
pool checks it before it proves anything itself. A listening pool therefore
signs nothing for a stranger that dials it, and a dialing worker signs one nonce
for the address it was told to dial. A pool that refuses the worker's proof says
so in an unsigned ``auth`` (``REFUSED_*``), which the worker reports.

Nothing a peer receives before it has proven it holds the key carries a MAC made
with the key (but the dialing worker's proof above): Pyro4's own HMAC layer is
off (EzPool's signed calls authenticate every message), the connect answer is a
bare nonce, and a failed ``auth`` gets an unsigned refusal (``REFUSED_WRONG_KEY``
or ``REFUSED_NO_KEY``) and a hang-up. A peer without the key thus learns nothing
to test guesses of the key against.

Until a connection has proven the key, Pyro4 handles each of its requests. From
then on its calls take the lean path (``lean``): read and answered here, with
the same checks of each call's MAC and counter (``ExposedServant.invoke``), but
none of Pyro4's per-request machinery.
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Callable, NamedTuple, Optional

import Pyro4
import Pyro4.errors
import Pyro4.util
from Pyro4.socketserver.threadpoolserver import ClientConnectionJob

from .._core.logs import get_logger
from .._core.records import Status
from ..security import same, sign
from .lean import read_call, send_reply
from .sessions import (
    PREAUTH_BYTES,
    PREAUTH_CONNECTIONS,
    PREAUTH_SECONDS,
    WORKER_LIMITS,
    GuardedConnection,
    Limits,
    Session,
    Sessions,
    first_message,
    hang_up,
)

logger = get_logger(__name__)

__all__ = [
    "Server",
    "Limits",
    "configure_worker_process",
    "configure_server_process",
    "worker_methods",
    "WithConnection",
    "PREAUTH_CONNECTIONS",
    "PREAUTH_SECONDS",
    "PREAUTH_BYTES",
    "REFUSED_WRONG_KEY",
    "REFUSED_NO_KEY",
]

#: Limits of a worker process (``serve`` only): Pyro4 reads these from its global
#: config alone, so they are set once, in the process that serves, never on import.
SERVER_THREADS = 256  # connections served at once
SERVER_IDLE_TIMEOUT = 10.0  # seconds a connection may stay silent mid-request or between requests
MAX_MESSAGE_SIZE = 1 << 30  # bytes: a frame that announces more is refused, not awaited

#: Pyro4's id of the ``marshal`` serializer, the only one a server accepts.
_MARSHAL = Pyro4.util.MarshalSerializer.serializer_id

#: What a failed ``auth`` is answered: the client's MAC is not the key's.
REFUSED_WRONG_KEY = "ezpool-refused:wrong-key"
#: What a failed ``auth`` is answered: one side has a key and the other none.
REFUSED_NO_KEY = "ezpool-refused:no-key"


def configure_worker_process() -> None:
    """Harden this process's Pyro4 daemon against silent, slow or lying clients.

    Called by ``ezpool.serve``'s ``main`` only: the process exists to serve.
    """
    configure_server_process(SERVER_THREADS)


def configure_server_process(threads: int) -> None:
    """``configure_worker_process`` for a process that serves ``threads`` connections at once."""
    Pyro4.config.THREADPOOL_SIZE = threads
    Pyro4.config.COMMTIMEOUT = SERVER_IDLE_TIMEOUT
    Pyro4.config.MAX_MESSAGE_SIZE = MAX_MESSAGE_SIZE
    Pyro4.config.SERIALIZERS_ACCEPTED = {"marshal"}


class Server:
    """A hardened Pyro4 daemon serving one table of methods, with its request loop in a thread.

    ``methods`` maps each name a client may call to what runs it (a worker's:
    ``worker_methods(servant)``).
    """

    def __init__(
        self,
        methods: Mapping[str, Any],
        host: str,
        port: int,
        name: str,
        hmac_key: Optional[bytes],
        tls: Optional[ssl.SSLContext] = None,
        limits: Limits = WORKER_LIMITS,
        dials: bool = False,
    ) -> None:
        # A worker that dials its pool listens nowhere: its daemon is given one end of a
        # socket pair that nothing else holds, and serves what serve_dialed hands it.
        self._pair = socket.socketpair() if dials else None
        connected = self._pair[0] if self._pair else None
        self._daemon = _Daemon(host, port, hmac_key, tls, limits, connected)
        exposed = ExposedServant(methods, self._daemon.sessions, hmac_key)
        self.uri = str(self._daemon.register(exposed, name))
        self._daemon.lean = (name, exposed)
        self._thread = threading.Thread(target=self._daemon.requestLoop, daemon=True, name="ezpool-daemon")
        self._stopped = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, daemon=True, name="ezpool-sweeper")

    @property
    def address(self) -> tuple[str, int]:
        """The host and port it listens on (the port the system chose, for port 0)."""
        host, port = self._daemon.sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        if self._pair is None:
            self._thread.start()
        self._sweeper.start()

    def serve_dialed(self, sock: socket.socket) -> str:
        """Serve a connection this side dialed, in this thread, until it ends; what the
        pool answered this side's proof of the key if it refused it (``REFUSED_*``), else "".

        The connection then meets every check an accepted one meets (the
        pre-authentication limits, TLS with this side as the server, the key both
        ways), this side proving first (see the module docstring).
        """
        with self._daemon.dialing(sock) as sessions:
            ClientConnectionJob(sock, _peer(sock), self._daemon)()
        return next((session.refused for session in sessions if session.refused), "")

    def shutdown(self) -> None:
        self._stopped.set()
        self._daemon.sessions.wake()
        self._daemon.shutdown()
        if self._pair is None:
            self._thread.join(5)
        else:
            for end in self._pair:
                end.close()

    def _sweep(self) -> None:
        while not self._stopped.is_set():
            self._daemon.sessions.sweep(self._stopped)


class WithConnection(NamedTuple):
    """A method of a ``Server``'s table that is given the caller's connection first."""

    run: Callable[..., Any]


def worker_methods(servant: Any) -> dict[str, Any]:
    """The calls a worker's ``Servant`` answers; ``run_chunk`` watches its client while it runs,
    and tells the servant the client's address (for ``status``)."""

    def run_chunk(connection: Any, *args: Any) -> Any:  # args: a ChunkCall as it travels
        client = connection.peer
        if not client:  # asked once a connection: the address of a socket does not change
            peer = _peer(connection.sock)
            client = connection.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        gone = functools.partial(_peer_closed, connection)
        status, reply = servant.run_chunk(*args, client_gone=gone, client=client)
        if status == Status.GONE.value:  # the servant has no answer: hang up
            hang_up(connection)
        return status, reply

    return {
        "hello": servant.hello, "ping": servant.ping, "load": servant.load,
        "run_chunk": WithConnection(run_chunk), "status": servant.status, "stop": servant.stop,
    }


class _Daemon(Pyro4.Daemon):
    """Pyro4's daemon, with admission, deadlines, TLS and nonces added to its handshake,
    and without Pyro4's own HMAC (see the module docstring)."""

    def __init__(
        self, host: str, port: int, key: Optional[bytes], tls: Optional[ssl.SSLContext], limits: Limits,
        connected: Optional[socket.socket] = None,
    ) -> None:
        if connected is None:
            super().__init__(host=host, port=port)
        else:
            super().__init__(connected_socket=connected)
        self._pyroHmacKey = None  # never sign anything with the key before the peer proved it
        self._key = key
        self._tls = tls
        self.sessions = Sessions(limits, tls=tls is not None)
        self._dialed: dict[int, list[Session]] = {}  # raw sockets this side dialed: their sessions
        self._dialed_lock = threading.Lock()
        self.lean: Optional[tuple[str, ExposedServant]] = None  # the object whose calls take the lean path

    def handleRequest(self, conn: Any) -> None:
        """One request: Pyro4 handles it until the connection has proven the key, and
        whatever is not an EzPool call after; the calls themselves take the lean path
        (``lean``, and the module docstring)."""
        session, lean = self.sessions.get(conn), self.lean
        call = None
        if session is not None and session.authenticated and lean is not None:
            call = read_call(conn, lean[0])  # None: anything else, put back for Pyro4
        if call is None or lean is None:
            super().handleRequest(conn)
            return
        exposed = lean[1]
        seq, args = call
        try:
            answer = exposed.invoke(conn, session, *args)
            if answer is None:  # hung up on
                raise Pyro4.errors.ConnectionClosedError("hung up on a call that failed its checks")
            send_reply(conn, seq, answer)
        except Exception as exc:  # answered as Pyro4 answers a call that raised
            errors = Pyro4.errors
            if type(exc) is not errors.ConnectionClosedError:
                logger.debug("a call raised %r", exc)
                if isinstance(exc, errors.SerializeError) or not isinstance(exc, errors.CommunicationError):
                    lines = Pyro4.util.formatTraceback(detailed=Pyro4.config.DETAILED_TRACEBACK)
                    self._sendExceptionResponse(conn, seq, _MARSHAL, exc, lines)
            if isinstance(exc, (Pyro4.errors.CommunicationError, Pyro4.errors.SecurityError)):
                raise

    @contextlib.contextmanager
    def dialing(self, sock: socket.socket) -> Iterator[list[Session]]:
        """While it lasts, ``sock`` is one this side dialed: the sessions it gets are listed."""
        sessions: list[Session] = []
        with self._dialed_lock:
            self._dialed[id(sock)] = sessions
        try:
            yield sessions
        finally:
            with self._dialed_lock:
                self._dialed.pop(id(sock), None)

    def _handshake(self, conn: Any, denied_reason: Optional[str] = None) -> bool:
        if denied_reason is not None:  # no thread free: close at once, reading nothing
            logger.debug("no thread free for a new connection: %s", denied_reason)
            return False
        conn.__class__ = GuardedConnection
        conn.preauth_limit = self.sessions.limits.bytes
        with contextlib.suppress(OSError):  # each answer leaves at once, as each call does
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = self.sessions.admit(conn)
        with self._dialed_lock:
            dialed = self._dialed.get(id(conn.sock))
        if dialed is not None:
            session.dialed = True
            dialed.append(session)
        if not first_message(conn.sock, session, tls=self._tls is not None):
            self.sessions.drop(conn)
            return False
        self.sessions.progressed(session)
        if self._tls is not None:
            if not self._tls_handshake(conn, session):
                self.sessions.drop(conn)
                return False
            self.sessions.progressed(session)
        accepted = bool(super()._handshake(conn))
        if not accepted:
            self.sessions.drop(conn)
        return accepted

    def _tls_handshake(self, conn: Any, session: Session) -> bool:
        """The TLS handshake, in this connection's own thread, on a socket that the
        pre-authentication cap and deadline can hang up at any moment."""
        assert self._tls is not None
        raw = conn.sock
        idle = raw.gettimeout()
        try:
            wrapped = self._tls.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            logger.debug("TLS set-up failed: %s", exc)
            return False
        conn.sock = wrapped  # from now on, a hang-up reaches the socket in use
        try:
            if session.dropped:  # dropped before the swap: its hang-up reached nothing
                hang_up(conn)
                return False
            wrapped.settimeout(max(0.001, session.seconds_left()))
            wrapped.do_handshake()
            wrapped.settimeout(idle)
        except (OSError, ssl.SSLError, ValueError) as exc:
            logger.debug("TLS handshake failed: %s", exc)
            return False
        return not session.dropped

    def validateHandshake(self, conn: Any, data: Any) -> Any:
        session = self.sessions.get(conn)
        if session is None or session.dropped:
            raise Pyro4.errors.SecurityError("connection not admitted")
        self.sessions.progressed(session)
        if not session.dialed:
            return {"nonce": session.nonce}
        pool = data.get("pool") if isinstance(data, dict) else None
        if not isinstance(pool, bytes) or len(pool) < 16:
            raise Pyro4.errors.SecurityError("the pool dialed sent no nonce: is it an EzPool pool?")
        proof = sign(self._key, pool, 0, "dial-in", session.nonce) if self._key else b""
        return {"nonce": session.nonce, "proof": proof}

    def clientDisconnect(self, conn: Any) -> None:
        self.sessions.drop(conn)


@Pyro4.expose
class ExposedServant:
    """The two calls a client may make: ``auth`` once, then signed ``call`` s of the
    methods in the table."""

    def __init__(
        self, methods: Mapping[str, Any], sessions: Sessions, key: Optional[bytes]
    ) -> None:
        self._methods = dict(methods)
        self._sessions = sessions
        self._key = key

    def auth(self, nonce: Any, mac: Any) -> Any:
        """Check the client's proof of the key; answer with this side's, or refuse unsigned."""
        connection = Pyro4.current_context.client
        session = self._sessions.get(connection)
        if session is not None and session.dialed and nonce in (REFUSED_WRONG_KEY, REFUSED_NO_KEY):
            session.refused = str(nonce)  # the pool this side dialed refused its proof
            return hang_up(connection)
        if session is None or session.authenticated or not isinstance(nonce, bytes):
            return hang_up(connection)
        refusal = self._refusal(session, nonce, mac)
        if refusal is not None:
            logger.debug("a client failed to authenticate (%s): refusing and hanging up", refusal)
            connection.hang_up_after_send = True
            return refusal
        if not self._sessions.authenticated(session):
            return hang_up(connection)
        logger.debug("a client connected and authenticated")
        return sign(self._key, session.nonce, 0, "auth-ok", nonce)

    def _refusal(self, session: Session, nonce: bytes, mac: Any) -> Optional[str]:
        if not isinstance(mac, bytes):
            return REFUSED_WRONG_KEY
        if not self._key:
            return REFUSED_NO_KEY if mac else None
        if not mac:
            return REFUSED_NO_KEY
        if not same(mac, sign(self._key, session.nonce, 0, "auth", nonce)):
            return REFUSED_WRONG_KEY
        return None

    def call(self, method: Any, counter: Any, mac: Any, args: Any) -> Any:
        """A call that Pyro4 handles (one from a connection that has not proven the key
        is hung up on; the others take the lean path, see ``_Daemon.handleRequest``)."""
        connection = Pyro4.current_context.client
        return self.invoke(connection, self._sessions.get(connection), method, counter, mac, args)

    def invoke(
        self, connection: Any, session: Optional[Session], method: Any, counter: Any, mac: Any, args: Any
    ) -> Optional[tuple[Any, bytes]]:
        """Run ``method`` with ``args`` if the call's MAC and counter hold, before anything in
        it is used: ``(result, MAC of the result)``; else ``None``, the connection hung up on."""
        if (
            session is None or not session.authenticated or not isinstance(counter, int)
            or counter <= session.counter or method not in self._methods
            or not isinstance(args, (list, tuple))
        ):
            hang_up(connection)
            return None
        if self._key and not same(mac, sign(self._key, session.nonce, counter, str(method), list(args))):
            logger.debug("a call with a bad signature: hanging up")
            hang_up(connection)
            return None
        session.counter = counter
        run = self._methods[method]
        result = run.run(connection, *args) if type(run) is WithConnection else run(*args)
        return result, sign(self._key, session.nonce, counter, "reply", result)


def _peer(sock: socket.socket) -> Any:
    try:
        return sock.getpeername()
    except OSError:
        return "?"


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
