"""The client side of a connection: EzPool's own handshake, then signed calls.

Pyro4's own proxy connects by itself and, in its handshake, unpickles whatever
serializer the server names. EzPool uses no proxy: a ``Connection`` opens the
socket (TLS if asked), sends Pyro4's connect message itself, refuses any answer
that is not in the ``marshal`` serializer *before* decoding it, and then sends
and reads Pyro4's call messages itself, never connecting again on its own::

    client                                   worker (server.Daemon)
    ──────                                   ──────────────────────
    TCP (+ TLS) ───────────────────────────▶ accepted; at most 32 connections may wait
                                             for authentication, each 5 s at most,
                                             with messages of 64 KiB at most
    CONNECT ───────────────────────────────▶ CONNECTOK + a fresh nonce for this connection
    auth(client nonce, MAC(nonce ...)) ────▶ checks the MAC: now authenticated;
                                       ◀──── MAC proving the worker holds the key too,
                                             or an unsigned refusal, and a hang-up
    call(method, counter, MAC, args) ──────▶ checks the MAC and that counter only grows
                                       ◀──── (result, MAC of the result for this call)

The MACs are HMAC-SHA256 with the shared key over the connection's nonce and a
counter, so a recorded call replayed on another connection, or to another
worker, or twice, is refused. Pyro4's own HMAC-SHA1 layer is off: it signed
even the refusal a keyless peer gets, which let it test guesses of the key
offline. Nothing signed with the key is sent to a peer that has not proven it
holds the key (a refusal is a bare word, ``server.REFUSED_*``); the client proves
first, so a fake worker gets one MAC over a nonce of its choice, and TLS with a
checked certificate keeps even that from anyone but the real worker.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import select
import socket
import ssl
import threading
from typing import Any, NamedTuple, Optional

import Pyro4
import Pyro4.errors
import Pyro4.message
import Pyro4.socketutil
import Pyro4.util

from .._core.logs import get_logger
from ..security import same, sign
from .server import REFUSED_NO_KEY, REFUSED_WRONG_KEY

logger = get_logger(__name__)

__all__ = ["Connection", "ConnectionRefused", "KeyRefused"]

_SERIALIZER = "marshal"


class ConnectionRefused(Pyro4.errors.CommunicationError):
    """Nothing accepts connections at the address (the system refused the connection)."""


class KeyRefused(Pyro4.errors.SecurityError):
    """The server refused this client's proof of the key: ``wrong_key`` if it has another
    key, else one side has a key and the other none."""

    def __init__(self, message: str, wrong_key: bool) -> None:
        super().__init__(message)
        self.wrong_key = wrong_key


class Connection:
    """One connection to one Pyro4 object: opened on first use, and again after a break.

    ``call`` sends a call and waits for its answer. ``send`` and ``receive`` split
    the two, so that a second call can wait at the worker while the first runs
    (the daemon answers a connection's calls one by one, in the order sent): the
    worker starts it the moment it has answered the first, with no round trip
    between. A call sent this way never blocks on a full socket: what the socket
    does not take at once goes out after the answer before it has been read (a
    worker reads the next call only once it has answered, so waiting to send it
    while that answer waits to be read would stall both sides).

    ``authenticate=False`` is for Pyro4's own daemon object (``registered()``), which
    knows nothing of EzPool's calls: the handshake is still EzPool's, the calls are
    not signed, and their answers are not checked.
    """

    def __init__(
        self,
        uri: Any,
        key: Optional[bytes],
        timeout: Optional[float],
        tls: Optional[ssl.SSLContext] = None,
        authenticate: bool = True,
    ) -> None:
        self.uri = uri
        self._key = key
        self._timeout = timeout
        self._tls = tls
        self._authenticate = authenticate
        self._connection: Any = None  # Pyro4's SocketConnection, once open
        self._sock: Optional[socket.socket] = None
        self._nonce = b""
        self._counter = 0  # of EzPool's signed calls on this connection
        self._seq = 0  # Pyro4's message sequence number
        self._sent: collections.deque[_Sent] = collections.deque()  # calls not answered yet, in order
        self._unsent = b""  # the tail of the last call sent, once the answer before it is read
        self._lock = threading.RLock()

    @property
    def timeout(self) -> Optional[float]:
        return self._timeout

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        self._timeout = value
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(value)

    @property
    def is_open(self) -> bool:
        return self._connection is not None

    @property
    def idle(self) -> bool:
        """Open, with no call unanswered, and not hung up on: a call sent now goes
        straight out on this connection, with no connecting first."""
        with self._lock:
            return self.is_open and not self._sent and not _hung_up(self._sock)

    def open(self) -> None:
        """Connect and authenticate now, if not connected; raises ``PyroError`` subclasses.

        A connection the worker has hung up on while it was idle (workers drop
        connections silent for ``server.SERVER_IDLE_TIMEOUT``) is opened again here,
        before anything is sent on it, rather than failing the next call.
        """
        with self._lock:
            if self.is_open:
                if self._sent or not _hung_up(self._sock):
                    return
                logger.debug("%s hung up on an idle connection: connecting again", self.uri)
            self.close()
            sock = _connect_socket(self.uri, self._timeout, self._tls)
            self._sock = sock  # so that abort() ends a handshake a stopped worker never answers
            try:
                connection, nonce, _ = _handshake(sock, self.uri)
                self._connection, self._sock, self._nonce, self._counter = connection, sock, nonce, 0
                if self._authenticate:
                    self._prove(nonce)
            except BaseException:
                self.close()
                with contextlib.suppress(OSError):
                    sock.close()
                raise

    def take_dialed(self, sock: socket.socket) -> None:
        """Use ``sock``, a connection a worker dialed in on, once both sides have proven
        the key, the worker first (see ``server``); ``KeyRefused`` if it cannot, after
        telling it so, unsigned. This side is still the client, TLS included."""
        with self._lock:
            self.close()
            sock.settimeout(self._timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            try:
                if self._tls is not None:
                    sock = self._sock = _wrap(sock, self._tls, None, self.uri)
                mine = secrets.token_bytes(16)
                connection, nonce, proof = _handshake(sock, self.uri, pool=mine)
                self._connection, self._nonce, self._counter = connection, nonce, 0
                refusal = _refusal(self._key, proof, sign(self._key, mine, 0, "dial-in", nonce))
                if refusal:
                    with contextlib.suppress(Exception):
                        self._post("auth", [refusal, b""], 0, False)
                    raise KeyRefused(f"the worker at {self.uri.host}:{self.uri.port} {_DIALED[refusal]}",
                                     wrong_key=refusal == REFUSED_WRONG_KEY and bool(proof))
                self._prove(nonce)
            except BaseException:
                self.close()
                with contextlib.suppress(OSError):
                    sock.close()
                raise

    def call(self, method: str, *args: Any) -> Any:
        """Call ``method`` remotely; any failure closes the connection and is raised."""
        with self._lock:
            return self.receive(self.send(method, *args))

    def send(self, method: str, *args: Any, queued: bool = False) -> object:
        """Send a call to ``method`` and return its ticket for ``receive``, without waiting.

        ``queued``: calls sent before it may still be unanswered; the connection is
        then not opened again (their answers would be lost), and what the socket
        cannot take at once is sent after their answers are read.
        """
        with self._lock:
            if not queued or not self._sent:
                self.open()
            elif not self.is_open:
                raise Pyro4.errors.ConnectionClosedError(f"connection to {self.uri} is closed")
            if not self._authenticate:
                return self._post(method, list(args), 0, queued)
            self._counter += 1
            counter = self._counter
            mac = sign(self._key, self._nonce, counter, method, list(args))
            return self._post("call", [method, counter, mac, list(args)], counter, queued)

    def _post(self, name: str, values: list[Any], counter: int, queued: bool) -> _Sent:
        serializer = Pyro4.util.get_serializer(_SERIALIZER)
        data, _ = serializer.serializeCall(self._connection.objectId, name, values, {}, compress=False)
        self._seq = (self._seq + 1) & 0xFFFF
        message = Pyro4.message.Message(Pyro4.message.MSG_INVOKE, data, serializer.serializer_id, 0,
                                         self._seq, {}, None)
        ticket = _Sent(self._seq, counter, name if not counter else str(values[0]))
        try:
            if queued and self._unsent:  # behind a tail still to go: in order, after it
                self._unsent += message.to_bytes()
            elif queued and self._sent:
                self._unsent = _send_now(self._sock, message.to_bytes())
            else:
                self._connection.send(message.to_bytes())
        except BaseException:
            self.close()
            raise
        self._sent.append(ticket)
        return ticket

    def receive(self, ticket: object) -> Any:
        """The answer to the call ``ticket``; calls are answered in the order they were sent.
        Any failure closes the connection (every call still unanswered is lost) and is raised."""
        with self._lock:
            if not self._sent or self._sent[0] is not ticket:
                self.close()
                raise Pyro4.errors.ConnectionClosedError(f"{self.uri}: closed before the answer came")
            try:
                answer = self._answer(self._sent[0])
                self._sent.popleft()
                if self._unsent:  # the next call's tail: the worker reads it now
                    unsent, self._unsent = self._unsent, b""
                    self._connection.send(unsent)
                return answer
            except BaseException:
                self.close()
                raise

    def _prove(self, nonce: bytes) -> None:
        """Prove this side holds the key, for this connection only; check the worker does too."""
        if not nonce:
            raise Pyro4.errors.ProtocolError("the server gave no nonce: is it an EzPool worker?")
        mine = secrets.token_bytes(16)
        proof = self.receive(self._post("auth", [mine, sign(self._key, nonce, 0, "auth", mine)], 0, False))
        if isinstance(proof, str):  # an unsigned refusal (server.REFUSED_*)
            wrong = proof == REFUSED_WRONG_KEY
            raise KeyRefused(f"{self.uri} refused this client's key ({proof})", wrong_key=wrong)
        if not self._key:
            if proof != b"":
                raise KeyRefused(f"{self.uri} has a key and this client none", wrong_key=False)
        elif not same(proof, sign(self._key, nonce, 0, "auth-ok", mine)):
            raise Pyro4.errors.SecurityError("the worker could not prove it holds the key")

    def _answer(self, sent: _Sent) -> Any:
        message = Pyro4.message
        serializer = Pyro4.util.get_serializer(_SERIALIZER)
        reply = message.Message.recv(self._connection, [message.MSG_RESULT], hmac_key=None)
        if reply.seq != sent.seq:
            raise Pyro4.errors.ProtocolError(f"{self.uri} answered call {reply.seq}, expected {sent.seq}")
        if reply.serializer_id != serializer.serializer_id:
            raise Pyro4.errors.ProtocolError(
                f"{self.uri} answered in serializer {reply.serializer_id}, which EzPool never decodes"
            )
        answer = serializer.deserializeData(reply.data, compressed=reply.flags & message.FLAGS_COMPRESSED)
        if reply.flags & message.FLAGS_EXCEPTION:
            raise answer if isinstance(answer, BaseException) else Pyro4.errors.ProtocolError(repr(answer))
        if not sent.counter:  # not one of EzPool's signed calls
            return answer
        if not isinstance(answer, (list, tuple)) or len(answer) != 2:
            raise Pyro4.errors.ProtocolError(f"{self.uri} answered {sent.method} with no signature")
        result, proof = answer
        if self._key and not same(proof, sign(self._key, self._nonce, sent.counter, "reply", result)):
            raise Pyro4.errors.SecurityError(f"{self.uri} answered {sent.method} with a bad signature")
        return result

    def call_if_idle(self, method: str, timeout: float) -> bool:
        """Call ``method`` (waiting ``timeout`` seconds at most) if the connection is idle now;
        if another thread is in a call on it, break that call off instead. Never waits for
        another thread's call; whether ``method`` was answered."""
        if not self._lock.acquire(timeout=0.1):
            self.abort()
            return False
        try:
            if not self.idle:
                return False
            self.timeout = timeout
            try:
                self.call(method)
            except Exception:
                return False
            return True
        finally:
            self._lock.release()

    def abort(self) -> None:
        """Break off a call another thread is waiting on (safe from any thread)."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        connection, self._connection, self._sock = self._connection, None, None
        self._sent.clear()
        self._unsent = b""
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def __repr__(self) -> str:
        return f"Connection({str(self.uri)!r}, {'open' if self.is_open else 'closed'})"


#: Why a pool refuses a dialing worker, as its log says it.
_DIALED = {
    REFUSED_WRONG_KEY: "could not prove it holds this pool's key: it has another key",
    REFUSED_NO_KEY: "and this pool disagree on having a key: one side has none",
}


def _refusal(key: Optional[bytes], proof: bytes, expected: bytes) -> str:
    """What a pool answers a dialing worker's ``proof`` of the key ("" if it holds)."""
    if not key:
        return REFUSED_NO_KEY if proof else ""
    if not proof:
        return REFUSED_NO_KEY
    return "" if same(proof, expected) else REFUSED_WRONG_KEY


class _Sent(NamedTuple):
    """A call sent and not yet answered: Pyro4's sequence number, EzPool's counter, the method."""

    seq: int
    counter: int
    method: str


#: What a queued call may send at once over TLS (a TLS socket cannot be written in
#: part without blocking): far less than any socket's buffers hold.
_TLS_AT_ONCE = 64 * 1024


def _send_now(sock: Any, data: bytes) -> bytes:
    """Send what ``sock`` takes without blocking; return the rest, to send later."""
    if isinstance(sock, ssl.SSLSocket):
        if len(data) > _TLS_AT_ONCE:
            return data
        Pyro4.socketutil.sendData(sock, data)
        return b""
    sent = 0
    try:
        if _DONTWAIT:
            sent = sock.send(data, _DONTWAIT)
        else:  # no such flag here: the socket itself does not block, for this one send
            timeout = sock.gettimeout()
            try:
                sock.setblocking(False)
                sent = sock.send(data)
            finally:
                sock.settimeout(timeout)
    except BlockingIOError:
        pass
    except OSError as exc:
        raise Pyro4.errors.ConnectionClosedError(f"sending: connection lost: {exc}") from None
    return data[sent:]


_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def _hung_up(sock: Optional[socket.socket]) -> bool:
    """Whether ``sock``, between two calls, has become readable: the peer closed it, or
    sent something no call asked for. Either way the connection is of no more use."""
    if sock is None:
        return True
    try:
        if hasattr(select, "poll"):  # any file number, unlike select()
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _connect_socket(uri: Any, timeout: Optional[float], tls: Optional[ssl.SSLContext]) -> socket.socket:
    try:
        sock = socket.create_connection((uri.host, uri.port), timeout)
    except ConnectionRefusedError as exc:
        raise ConnectionRefused(f"cannot connect to {uri.host}:{uri.port}: {exc}") from None
    except OSError as exc:
        raise Pyro4.errors.CommunicationError(f"cannot connect to {uri.host}:{uri.port}: {exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is None:
        return sock
    return _wrap(sock, tls, uri.host, uri)


def _wrap(sock: socket.socket, tls: ssl.SSLContext, hostname: Optional[str], uri: Any) -> socket.socket:
    """``sock`` with TLS on it, this side the client, checking the server's certificate
    (and that it names ``hostname``, if given)."""
    try:
        return tls.wrap_socket(sock, server_hostname=hostname)
    except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError) as exc:
        # Hung up on mid-handshake, as a server shedding a flood of connections does:
        # a connection closed, worth another try, not a refusal.
        sock.close()
        raise Pyro4.errors.ConnectionClosedError(
            f"{uri.host}:{uri.port} closed the connection during the TLS handshake: {exc}"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise Pyro4.errors.SecurityError(f"TLS with {uri.host}:{uri.port} failed: {exc}") from None


def _handshake(sock: socket.socket, uri: Any, pool: Optional[bytes] = None) -> tuple[Any, bytes, bytes]:
    """Pyro4's connect handshake, refusing any answer not in ``marshal`` before decoding it:
    the connection, the server's nonce, and its proof of the key over ``pool`` (the
    nonce of a pool a worker dialed, which must prove itself first; else ``b""``).

    Unsigned both ways: the key is proven by ``auth`` right after.
    """
    connection = Pyro4.socketutil.SocketConnection(sock, uri.object)
    serializer = Pyro4.util.get_serializer(_SERIALIZER)
    hello = "ezpool" if pool is None else {"pool": pool}
    data, _ = serializer.serializeData({"handshake": hello, "object": uri.object}, False)
    message = Pyro4.message
    flags = 0
    hello = message.Message(message.MSG_CONNECT, data, serializer.serializer_id, flags, 0, {}, None)
    connection.send(hello.to_bytes())
    reply = message.Message.recv(connection, [message.MSG_CONNECTOK, message.MSG_CONNECTFAIL], hmac_key=None)
    if reply.serializer_id != serializer.serializer_id:
        raise Pyro4.errors.ProtocolError(
            f"{uri.host}:{uri.port} answered in serializer {reply.serializer_id}, which EzPool never decodes"
        )
    answer = serializer.deserializeData(reply.data, compressed=reply.flags & message.FLAGS_COMPRESSED)
    if reply.type == message.MSG_CONNECTFAIL:
        raise Pyro4.errors.CommunicationError(f"connection to {uri.host}:{uri.port} rejected: {answer}")
    if reply.flags & message.FLAGS_META_ON_CONNECT and isinstance(answer, dict):
        answer = answer.get("handshake")
    nonce = answer.get("nonce", b"") if isinstance(answer, dict) else b""
    proof = answer.get("proof", b"") if isinstance(answer, dict) else b""
    return (
        connection,
        bytes(nonce) if isinstance(nonce, (bytes, bytearray)) else b"",
        bytes(proof) if isinstance(proof, (bytes, bytearray)) else b"",
    )
