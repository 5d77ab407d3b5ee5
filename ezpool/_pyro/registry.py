"""EzPool's name server: a registry of names, served like a worker.

``python -m ezpool.nameserver`` runs a ``NameServerProcess``: a ``Registry`` behind
the same hardened ``server.Server`` that workers use, under Pyro4's name-server
object name at ``HOST:PORT``, so ``PYRONAME:name@host:port``, ``serve --ns`` and
``list_workers(ns=...)`` find it where they found Pyro4's. So it has the workers'
limits before authentication (a connection cap with eviction of the oldest, a
deadline, a message size bound checked before anything is read or verified),
their signed calls (a nonce per connection and a counter that only grows, so a
recorded exchange replayed runs nothing), and their TLS option. Its calls,
signed like a worker's::

    list(prefix)                 {name: (uri, [metadata...])} of every name under prefix
    register(name, uri, [meta])  add or overwrite name
    remove(name)                 True if it was there
    lookup(name)                 its uri, or "" when it is not registered
"""

from __future__ import annotations

import ssl
import threading
from typing import Any, Callable, Optional

import Pyro4.constants

from .._core.logs import get_logger
from .server import Limits, Server, configure_server_process

logger = get_logger(__name__)

__all__ = ["Registry", "NameServerProcess", "NAME_SERVER_THREADS", "NAME_SERVER_LIMITS"]

#: Connections a name server serves at once: enough for hundreds of workers
#: registering together (each registration is one short connection).
NAME_SERVER_THREADS = 1024
#: A name server lets more connections wait for authentication than a worker
#: (hundreds of workers may register at once), within the same time and size.
NAME_SERVER_LIMITS = Limits(connections=256)
#: The most names a registry holds, and the longest name, URI or metadata item.
MAX_NAMES = 100_000
MAX_TEXT = 1024
MAX_METADATA = 64


class Registry:
    """Names and their URIs and metadata, safe to use from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: dict[str, tuple[str, list[str]]] = {}

    def methods(self) -> dict[str, Callable[..., Any]]:
        """The calls clients make, for ``server.Server``."""
        return {"list": self.list, "register": self.register, "remove": self.remove, "lookup": self.lookup}

    def list(self, prefix: Any) -> dict[str, tuple[str, list[str]]]:
        prefix = _text(prefix, "prefix")
        with self._lock:
            found = [(name, entry) for name, entry in self._names.items() if name.startswith(prefix)]
        return {name: (uri, list(meta)) for name, (uri, meta) in found}

    def register(self, name: Any, uri: Any, metadata: Any) -> None:
        name, uri = _text(name, "name"), _text(uri, "uri")
        if not name:
            raise ValueError("a name to register must not be empty")
        if not isinstance(metadata, (list, tuple)) or len(metadata) > MAX_METADATA:
            raise ValueError(f"metadata must be a list of at most {MAX_METADATA} strings")
        items = sorted({_text(item, "metadata item") for item in metadata})
        with self._lock:
            if name not in self._names and len(self._names) >= MAX_NAMES:
                raise ValueError(f"the name server holds {MAX_NAMES} names already")
            self._names[name] = (uri, items)
        logger.debug("registered %s as %s", name, uri)

    def remove(self, name: Any) -> bool:
        name = _text(name, "name")
        with self._lock:
            found = self._names.pop(name, None) is not None
        if found:
            logger.debug("removed %s", name)
        return found

    def lookup(self, name: Any) -> str:
        name = _text(name, "name")
        with self._lock:
            return self._names.get(name, ("", []))[0]


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"{what} must be a string of at most {MAX_TEXT} characters, got {value!r:.80}")
    return value


class NameServerProcess:
    """EzPool's name server in this process (which it configures to serve), in a thread.

    ``hmac_key`` ``None`` runs it without a key; ``tls`` serves it over TLS.
    """

    def __init__(
        self, host: str, port: int, hmac_key: Optional[bytes], tls: Optional[ssl.SSLContext] = None
    ) -> None:
        configure_server_process(NAME_SERVER_THREADS)
        self.registry = Registry()
        self._server = Server(
            self.registry.methods(), host, port, Pyro4.constants.NAMESERVER_NAME, hmac_key, tls,
            limits=NAME_SERVER_LIMITS,
        )
        bound_host, bound_port = self._server.address
        self.address = f"{bound_host}:{bound_port}"

    def start(self) -> None:
        self._server.start()

    def shutdown(self) -> None:
        self._server.shutdown()
