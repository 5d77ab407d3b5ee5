"""The client side of a connection: EzPool's own handshake, then signed calls.

Pyro4's own proxy connects by itself and, in its handshake, unpickles whatever
serializer the server names. EzPool never lets it: a ``Connection`` opens the
socket (TLS if asked), sends Pyro4's connect message itself, refuses any answer
that is not in the ``marshal`` serializer *before* decoding it, and only then hands
the socket to a proxy, which it never lets reconnect on its own::

    client                                   worker (server.Daemon)
    ──────                                   ──────────────────────
    TCP (+ TLS) ───────────────────────────▶ accepted; at most 32 connections may wait
                                             for authentication, each 5 s at most,
                                             with messages of 64 KiB at most
    CONNECT (HMAC) ────────────────────────▶ CONNECTOK + a fresh nonce for this connection
    auth(client nonce, MAC(nonce ...)) ────▶ checks the MAC: now authenticated;
                                       ◀──── MAC proving the worker holds the key too
    call(method, counter, MAC, args) ──────▶ checks the MAC and that counter only grows
                                       ◀──── (result, MAC of the result for this call)

The MACs are HMAC-SHA256 with the shared key over the connection's nonce and a
counter, so a recorded call replayed on another connection, or to another
worker, or twice, is refused. Pyro4's own HMAC-SHA1 stays on as an outer layer.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import select
import socket
import ssl
import threading
from typing import Any, Optional

import Pyro4
import Pyro4.errors
import Pyro4.message
import Pyro4.socketutil
import Pyro4.util

from ..security import same, sign

logger = logging.getLogger(__name__)

__all__ = ["Connection"]

_SERIALIZER = "marshal"


class Connection:
    """One connection to one Pyro4 object: opened on first use, and again after a break.

    ``authenticate=False`` is for Pyro4's own name server, which knows nothing of
    EzPool's calls: the handshake is still EzPool's, and the HMAC key still applies.
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
        self._proxy: Any = None
        self._sock: Optional[socket.socket] = None
        self._nonce = b""
        self._counter = 0
        self._lock = threading.RLock()

    @property
    def timeout(self) -> Optional[float]:
        return self._timeout

    @timeout.setter
    def timeout(self, value: Optional[float]) -> None:
        self._timeout = value
        proxy = self._proxy
        if proxy is not None:
            with contextlib.suppress(Exception):
                proxy._pyroTimeout = value

    @property
    def is_open(self) -> bool:
        proxy = self._proxy
        return proxy is not None and proxy._pyroConnection is not None

    def open(self) -> None:
        """Connect and authenticate now, if not connected; raises ``PyroError`` subclasses.

        A connection the worker has hung up on while it was idle (workers drop
        connections silent for ``server.SERVER_IDLE_TIMEOUT``) is opened again here,
        before anything is sent on it, rather than failing the next call.
        """
        with self._lock:
            if self.is_open:
                if not _hung_up(self._sock):
                    return
                logger.debug("%s hung up on an idle connection: connecting again", self.uri)
            self.close()
            sock = _connect_socket(self.uri, self._timeout, self._tls)
            try:
                connection, nonce, meta = _handshake(sock, self.uri, self._key)
                proxy = Pyro4.Proxy(self.uri)
                proxy._pyroHmacKey = self._key
                proxy._pyroSerializer = _SERIALIZER
                proxy._pyroConnection = connection
                proxy._pyroTimeout = self._timeout
                proxy._pyroMethods = set(meta.get("methods", ()))
                proxy._pyroAttrs = set(meta.get("attrs", ()))
                proxy._pyroOneway = set(meta.get("oneway", ()))
                if self._authenticate:
                    _authenticate(proxy, self._key, nonce)
            except BaseException:
                with contextlib.suppress(OSError):
                    sock.close()
                raise
            self._proxy, self._sock, self._nonce, self._counter = proxy, sock, nonce, 0

    def call(self, method: str, *args: Any) -> Any:
        """Call ``method`` remotely; any failure closes the connection and is raised."""
        with self._lock:
            self.open()
            proxy = self._proxy
            try:
                if not self._authenticate:
                    return proxy._pyroInvoke(method, args, {})
                self._counter += 1
                counter = self._counter
                mac = sign(self._key, self._nonce, counter, method, list(args))
                answer = proxy._pyroInvoke("call", (method, counter, mac, list(args)), {})
                if not isinstance(answer, (list, tuple)) or len(answer) != 2:
                    raise Pyro4.errors.ProtocolError(f"{self.uri} answered {method} with no signature")
                result, proof = answer
                if self._key and not same(proof, sign(self._key, self._nonce, counter, "reply", result)):
                    raise Pyro4.errors.SecurityError(f"{self.uri} answered {method} with a bad signature")
                return result
            except BaseException:
                self.close()
                raise

    def abort(self) -> None:
        """Break off a call another thread is waiting on (safe from any thread)."""
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        proxy, self._proxy, self._sock = self._proxy, None, None
        if proxy is not None:
            with contextlib.suppress(Exception):
                proxy._pyroRelease()

    def __repr__(self) -> str:
        return f"Connection({str(self.uri)!r}, {'open' if self.is_open else 'closed'})"


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
    except OSError as exc:
        raise Pyro4.errors.CommunicationError(f"cannot connect to {uri.host}:{uri.port}: {exc}") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname=uri.host)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise Pyro4.errors.SecurityError(f"TLS with {uri.host}:{uri.port} failed: {exc}") from None


def _handshake(sock: socket.socket, uri: Any, key: Optional[bytes]) -> tuple[Any, bytes, dict[str, Any]]:
    """Pyro4's connect handshake, refusing any answer not in ``marshal`` before decoding it."""
    connection = Pyro4.socketutil.SocketConnection(sock, uri.object)
    serializer = Pyro4.util.get_serializer(_SERIALIZER)
    data, _ = serializer.serializeData({"handshake": "ezpool", "object": uri.object}, False)
    message = Pyro4.message
    flags = message.FLAGS_META_ON_CONNECT
    hello = message.Message(message.MSG_CONNECT, data, serializer.serializer_id, flags, 0, {}, key)
    connection.send(hello.to_bytes())
    reply = message.Message.recv(connection, [message.MSG_CONNECTOK, message.MSG_CONNECTFAIL], hmac_key=key)
    if reply.serializer_id != serializer.serializer_id:
        raise Pyro4.errors.ProtocolError(
            f"{uri.host}:{uri.port} answered in serializer {reply.serializer_id}, which EzPool never decodes"
        )
    answer = serializer.deserializeData(reply.data, compressed=reply.flags & message.FLAGS_COMPRESSED)
    if reply.type == message.MSG_CONNECTFAIL:
        raise Pyro4.errors.CommunicationError(f"connection to {uri.host}:{uri.port} rejected: {answer}")
    meta: dict[str, Any] = {}
    if reply.flags & message.FLAGS_META_ON_CONNECT and isinstance(answer, dict):
        meta, answer = answer.get("meta") or {}, answer.get("handshake")
    nonce = answer.get("nonce", b"") if isinstance(answer, dict) else b""
    return connection, bytes(nonce) if isinstance(nonce, (bytes, bytearray)) else b"", meta


def _authenticate(proxy: Any, key: Optional[bytes], nonce: bytes) -> None:
    """Prove this side holds the key, for this connection only; check the worker does too."""
    if not nonce:
        raise Pyro4.errors.ProtocolError("the server gave no nonce: is it an EzPool worker?")
    mine = secrets.token_bytes(16)
    proof = proxy._pyroInvoke("auth", (mine, sign(key, nonce, 0, "auth", mine)), {})
    if key and not same(proof, sign(key, nonce, 0, "auth-ok", mine)):
        raise Pyro4.errors.SecurityError("the worker could not prove it holds the key")
