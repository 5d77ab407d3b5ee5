"""Pyro4's name server, seen through EzPool: look-ups, registrations, and their addresses."""

from __future__ import annotations

import threading
from typing import Any, Optional

import Pyro4
import Pyro4.constants
import Pyro4.errors

from .._core.logs import get_logger
from ..errors import WorkerUnavailable
from .client import Connection

logger = get_logger(__name__)

__all__ = ["NS_PORT", "name_server_uri", "NameServer", "NameServerProcess", "resolve"]

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
        self._connection = Connection(Pyro4.URI(uri), hmac_key, timeout, authenticate=False)

    def __enter__(self) -> NameServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._connection.close()

    def entries(self, prefix: str) -> dict[str, tuple[str, list[str]]]:
        """Every name under ``prefix``, with its URI and its metadata strings."""
        found = self._connection.call("list", prefix, None, None, None, True)
        return {
            str(name): (str(uri), [str(item) for item in metadata]) for name, (uri, metadata) in found.items()
        }

    def register(self, name: str, uri: str, metadata: set[str]) -> None:
        """Register (or overwrite) ``name`` as ``uri``, with exactly ``metadata``."""
        self._connection.call("register", name, uri, False, sorted(metadata))

    def remove(self, name: str) -> None:
        """Remove ``name``; nothing happens when it is not registered."""
        self._connection.call("remove", name)

    def lookup(self, name: str) -> Any:
        """The URI registered as ``name``."""
        return self._connection.call("lookup", name)


def _split_address(address: str) -> tuple[str, Optional[int]]:
    if ":" not in address:
        return address, None
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"name server address {address!r} must be HOST or HOST:PORT")
    return host, int(port)


def resolve(uri: Any, hmac_key: Optional[bytes], timeout: float) -> Any:
    """The ``PYRO:`` URI that a ``PYRONAME:`` URI stands for now (a ``PYRO:`` URI as it is).

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
        with NameServer(name_server_uri(where), hmac_key, timeout) as server:
            return Pyro4.URI(str(server.lookup(uri.object)))
    except Pyro4.errors.PyroError as exc:
        raise WorkerUnavailable(
            f"cannot look up {uri.object!r} at the name server at {where}: {exc}"
        ) from None


#: Connections a name server serves at once: enough for hundreds of workers
#: registering together (each registration is one short connection).
NAME_SERVER_THREADS = 1024


class NameServerProcess:
    """A Pyro4 name server in this process, keyed, without broadcast, in a thread."""

    def __init__(self, host: str, port: int, hmac_key: Optional[bytes]) -> None:
        import Pyro4.naming

        Pyro4.config.THREADPOOL_SIZE = NAME_SERVER_THREADS
        Pyro4.config.COMMTIMEOUT = 10.0
        Pyro4.config.SERIALIZERS_ACCEPTED = {"marshal", "serpent"}
        _uri, self._daemon, _broadcast = Pyro4.naming.startNS(
            host=host, port=port, enableBroadcast=False, hmac=hmac_key
        )
        bound_host, bound_port = self._daemon.sock.getsockname()[:2]
        self.address = f"{bound_host}:{bound_port}"
        self._thread = threading.Thread(target=self._daemon.requestLoop, daemon=True, name="ezpool-ns")

    def start(self) -> None:
        self._thread.start()

    def shutdown(self) -> None:
        self._daemon.shutdown()
        self._thread.join(5)
