"""Everything EzPool asks of Pyro4, in one module: no other module imports it.

Pyro4 is archived at 4.82, so it is kept behind this small surface. Every setting
is made per proxy or per daemon (HMAC key, serializer, time-outs), never through
Pyro4's global config, and nothing happens at import beyond importing Pyro4.
Calls carry only bytes, ints and strings, so the ``marshal`` serializer suffices
and Pyro4 never unpickles anything itself: EzPool's own pickles travel as bytes.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from typing import Any, Optional

import Pyro4
import Pyro4.constants
import Pyro4.errors

from .errors import AuthenticationError, WorkerUnavailable

logger = logging.getLogger(__name__)

__all__ = [
    "CommunicationError",
    "PyroTimeout",
    "PyroError",
    "parse_uri",
    "is_loopback",
    "make_proxy",
    "connect",
    "resolve",
    "Server",
    "configure_worker_process",
    "name_server_uri",
    "NameServer",
    "translate",
    "abort",
]

CommunicationError = Pyro4.errors.CommunicationError
PyroTimeout = Pyro4.errors.TimeoutError
PyroError = Pyro4.errors.PyroError

_SERIALIZER = "marshal"
_LOOPBACK_NAMES = ("localhost", "::1", "ip6-localhost")


def parse_uri(text: Any) -> Any:
    """Check a worker URI (``PYRO:name@host:port`` or ``PYRONAME:name[@ns_host:port]``).

    Raises ``ValueError`` quoting it when it is not one.
    """
    if not isinstance(text, str):
        raise ValueError(f"worker URI must be a string, got {text!r}")
    try:
        uri = Pyro4.URI(text)
    except PyroError as exc:
        raise ValueError(
            f"{text!r} is not a Pyro URI ({exc}); expected e.g. 'PYRO:worker@localhost:21000'"
        ) from None
    if uri.protocol not in ("PYRO", "PYRONAME"):
        raise ValueError(f"{text!r}: use a PYRO: or PYRONAME: URI")
    return uri


def is_loopback(host: Optional[str]) -> bool:
    """Whether ``host`` names this machine's loopback interface."""
    return bool(host) and (host in _LOOPBACK_NAMES or str(host).startswith("127."))


def make_proxy(uri: Any, hmac_key: Optional[bytes], timeout: Optional[float]) -> Any:
    """A proxy set up for EzPool: its own key, serializer and time-out."""
    proxy = Pyro4.Proxy(uri)
    proxy._pyroHmacKey = hmac_key
    proxy._pyroSerializer = _SERIALIZER
    proxy._pyroTimeout = timeout
    return proxy


def connect(proxy: Any) -> None:
    """Open the proxy's connection now (a no-op when it is open): nothing is sent yet.

    A failure here means a request was certainly not delivered.
    """
    proxy._pyroBind()


def resolve(uri: Any, hmac_key: Optional[bytes], timeout: float) -> Any:
    """The ``PYRO:`` URI that a ``PYRONAME:`` URI stands for now (a ``PYRO:`` URI as it is).

    Any failure of the name server is a ``WorkerUnavailable`` naming it.
    """
    if uri.protocol != "PYRONAME":
        return uri
    where = f"{uri.host}:{uri.port or NS_PORT}" if uri.host else "the name server found by broadcast"
    try:
        if uri.host:
            with NameServer(name_server_uri(where), hmac_key, timeout) as server:
                return server.lookup(uri.object)
        with Pyro4.locateNS(hmac_key=hmac_key) as ns:
            ns._pyroTimeout = timeout
            return ns.lookup(uri.object)
    except PyroError as exc:
        raise WorkerUnavailable(f"cannot look up {uri.object!r} at {where}: {exc}") from None


def abort(proxy: Any) -> None:
    """Break off a call that another thread is waiting on: its socket is shut down."""
    connection = getattr(proxy, "_pyroConnection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def translate(exc: BaseException, uri: str, what: str = "worker") -> Exception:
    """Turn a Pyro4 error into EzPool's own, naming the ``what`` (worker, name server) at ``uri``."""
    text = str(exc)
    if "hmac" in text.lower():
        if "not symmetric" in text:
            return AuthenticationError(
                f"{what} {uri} and this client disagree on having an HMAC key: one side has "
                "none; set the same EZPOOL_HMAC_KEY (or hmac_key=) on both"
            )
        return AuthenticationError(f"{what} {uri} rejected this client's HMAC key: the key is wrong")
    if "refused" in text.lower():
        return WorkerUnavailable(
            f"{what} {uri} cannot be reached: connection refused. Check that it runs, "
            "that it listens on an address this machine can reach (python -m ezpool.serve "
            "listens on 127.0.0.1 unless given --host), that both sides use the same key, "
            "and that no firewall blocks the port"
        )
    return WorkerUnavailable(f"{what} {uri} cannot be reached: {text}")


#: Limits of a worker process (``serve`` only): Pyro4 reads these from its global
#: config alone, so they are set once, in the process that serves, never on import.
SERVER_THREADS = 256  # connections served at once
SERVER_IDLE_TIMEOUT = 10.0  # seconds a connection may stay silent mid-request or between requests
MAX_MESSAGE_SIZE = 1 << 30  # bytes: a frame that announces more is refused, not awaited


def configure_worker_process() -> None:
    """Harden this process's Pyro4 daemon against silent, slow or lying clients.

    Called by ``ezpool.serve``'s ``main`` only: the process exists to serve.
    """
    Pyro4.config.THREADPOOL_SIZE = SERVER_THREADS
    Pyro4.config.COMMTIMEOUT = SERVER_IDLE_TIMEOUT
    Pyro4.config.MAX_MESSAGE_SIZE = MAX_MESSAGE_SIZE


class Server:
    """A Pyro4 daemon serving one ``Servant``, with its request loop in a thread."""

    def __init__(self, servant: Any, host: str, port: int, name: str, hmac_key: Optional[bytes]) -> None:
        self._daemon = Pyro4.Daemon(host=host, port=port)
        self._daemon._pyroHmacKey = hmac_key
        self.uri = str(self._daemon.register(ExposedServant(servant), name))
        self._thread = threading.Thread(target=self._daemon.requestLoop, daemon=True, name="ezpool-daemon")

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._daemon.shutdown()
        self._thread.join(5)


@Pyro4.expose
class ExposedServant:
    """What clients may call on a ``Servant``; the connection a request came on is known here."""

    def __init__(self, servant: Any) -> None:
        self._servant = servant

    def hello(self) -> Any:
        return self._servant.hello()

    def ping(self) -> Any:
        return self._servant.ping()

    def describe(self) -> Any:
        return self._servant.describe()

    def busy(self) -> Any:
        return self._servant.busy()

    def run_chunk(self, identity: str, first: int, count: int, payloads: list, timeout: Any) -> Any:
        connection = Pyro4.current_context.client
        status, reply = self._servant.run_chunk(
            identity, first, count, payloads, timeout, client_gone=lambda: _peer_closed(connection)
        )
        if status == "drop":  # a fault a test asked for: hang up without an answer
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)
        return status, reply


def _peer_closed(connection: Any) -> bool:
    """Whether the client at the other end of ``connection`` has hung up."""
    sock = getattr(connection, "sock", None)
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


#: The port of a name server given as ``HOST`` alone: Pyro4's own default.
NS_PORT = 9090


def name_server_uri(address: str) -> str:
    """The Pyro URI of the name server at ``HOST[:PORT]``; ``ValueError`` if it is not one."""
    host, port = _split_address(address)
    if not host:
        raise ValueError(f"name server address {address!r} must be HOST or HOST:PORT")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"PYRO:{Pyro4.constants.NAMESERVER_NAME}@{host}:{port or NS_PORT}"


class NameServer:
    """One short exchange with a Pyro4 name server: a proxy of its own, closed on exit.

    A new one is made for every exchange, since a Pyro4 proxy belongs to the thread
    that made it and a name server that restarted leaves an old connection broken.
    Every call raises ``PyroError`` when the name server cannot be reached or refuses.
    """

    def __init__(self, uri: str, hmac_key: Optional[bytes], timeout: float) -> None:
        self._proxy = make_proxy(uri, hmac_key, timeout)

    def __enter__(self) -> NameServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._proxy._pyroRelease()

    def entries(self, prefix: str) -> dict[str, tuple[str, list[str]]]:
        """Every name under ``prefix``, with its URI and its metadata strings."""
        found = self._proxy.list(prefix=prefix, return_metadata=True)
        return {
            str(name): (str(uri), [str(item) for item in metadata]) for name, (uri, metadata) in found.items()
        }

    def register(self, name: str, uri: str, metadata: set[str]) -> None:
        """Register (or overwrite) ``name`` as ``uri``, with exactly ``metadata``."""
        self._proxy.register(name, uri, safe=False, metadata=sorted(metadata))

    def remove(self, name: str) -> None:
        """Remove ``name``; nothing happens when it is not registered."""
        self._proxy.remove(name)

    def lookup(self, name: str) -> Any:
        """The URI registered as ``name``."""
        return self._proxy.lookup(name)


def _split_address(address: str) -> tuple[str, Optional[int]]:
    if ":" not in address:
        return address, None
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"name server address {address!r} must be HOST or HOST:PORT")
    return host, int(port)
