"""EzPool's name server, seen from its clients: look-ups, registrations, and their addresses.

The server side is ``registry``; both speak the workers' authenticated protocol.
"""

from __future__ import annotations

import ssl
import time
from typing import Any, Optional

import Pyro4
import Pyro4.constants
import Pyro4.errors

from .._core.logs import get_logger
from ..errors import WorkerUnavailable
from .client import Connection

logger = get_logger(__name__)

__all__ = ["NS_PORT", "name_server_uri", "NameServer", "resolve"]

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
    """One short exchange with an EzPool name server (``registry``): a connection of its
    own, authenticated with the key (and over TLS if ``tls``), closed on exit.

    A new one is made for every exchange, since a name server that restarted leaves
    an old connection broken. Entering connects (again, a few times, when the name
    server drops the connection while it sheds a flood of others); every call
    raises ``PyroError`` when the name server cannot be reached or refuses.
    """

    def __init__(
        self, uri: str, hmac_key: Optional[bytes], timeout: float, tls: Optional[ssl.SSLContext] = None
    ) -> None:
        self._connection = Connection(Pyro4.URI(uri), hmac_key, timeout, tls)

    def __enter__(self) -> NameServer:
        for attempt in range(1, _CONNECT_TRIES + 1):
            try:
                self._connection.open()
                return self
            except Pyro4.errors.ConnectionClosedError as exc:
                if attempt == _CONNECT_TRIES:
                    raise
                logger.debug("the name server closed the connection (%s); connecting again", exc)
                time.sleep(0.1 * attempt)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._connection.close()

    def entries(self, prefix: str) -> dict[str, tuple[str, list[str]]]:
        """Every name under ``prefix``, with its URI and its metadata strings."""
        found = self._connection.call("list", prefix)
        return {
            str(name): (str(uri), [str(item) for item in metadata]) for name, (uri, metadata) in found.items()
        }

    def register(self, name: str, uri: str, metadata: set[str]) -> None:
        """Register (or overwrite) ``name`` as ``uri``, with exactly ``metadata``."""
        self._connection.call("register", name, uri, sorted(metadata))

    def remove(self, name: str) -> None:
        """Remove ``name``; nothing happens when it is not registered."""
        self._connection.call("remove", name)

    def lookup(self, name: str) -> str:
        """The URI registered as ``name``; ``NamingError`` when there is none."""
        uri = self._connection.call("lookup", name)
        if not uri:
            raise Pyro4.errors.NamingError(f"unknown name: {name}")
        return str(uri)


#: Times ``NameServer`` connects when the name server closes the connection under it.
_CONNECT_TRIES = 3


def _split_address(address: str) -> tuple[str, Optional[int]]:
    if ":" not in address:
        return address, None
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"name server address {address!r} must be HOST or HOST:PORT")
    return host, int(port)


def resolve(uri: Any, hmac_key: Optional[bytes], timeout: float, tls: Optional[ssl.SSLContext] = None) -> Any:
    """The ``PYRO:`` URI that a ``PYRONAME:`` URI stands for now (a ``PYRO:`` URI as it is).

    The name server is reached like the workers: with ``hmac_key``, over TLS if ``tls``.
    Any failure of the name server is a ``WorkerUnavailable`` naming it.
    """
    if uri.protocol != "PYRONAME":
        return uri
    if not uri.host:
        raise WorkerUnavailable(
            f"{uri} names no name server: write PYRONAME:{uri.object}@HOST:PORT (EzPool never "
            "looks for one by broadcast)"
        )
    where = f"{uri.host}:{uri.port or NS_PORT}"
    try:
        with NameServer(name_server_uri(where), hmac_key, timeout, tls) as server:
            return Pyro4.URI(str(server.lookup(uri.object)))
    except Pyro4.errors.PyroError as exc:
        raise WorkerUnavailable(
            f"cannot look up {uri.object!r} at the name server at {where}: {exc}"
        ) from None
