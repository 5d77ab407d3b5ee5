"""Everything EzPool asks of Pyro4, in one package: no other part of EzPool imports it.

Pyro4 is archived at 4.82, so it is kept behind this small surface. Settings are
made per connection or per daemon (HMAC key, serializer, time-outs, TLS), never
through Pyro4's global config except in a worker process (``server``), and
nothing happens at import beyond importing Pyro4. Calls carry only bytes, numbers
and strings in the ``marshal`` serializer: EzPool's own pickles travel as bytes,
and are opened only after the call that carries them was authenticated.

- ``client``: ``Connection``, EzPool's own handshake and signed calls;
  ``dialed``: ``DialedConnection``, to a worker that dialed in.
- ``server``: ``Server``, a daemon that trusts no one before the key; ``lean``: how
  it reads and answers the calls of a connection that proved the key, without
  Pyro4's per-request machinery.
- ``names``: the name server's clients; ``registry``: the name server itself.
"""

from __future__ import annotations

from typing import Any

import Pyro4
import Pyro4.errors

from .._core.logs import get_logger
from ..errors import AuthenticationError, WorkerUnavailable
from .client import Connection, ConnectionRefused, KeyRefused
from .dialed import DialedConnection
from .names import NS_PORT, NameServer, name_server_uri, resolve
from .registry import NameServerProcess
from .server import Server, configure_worker_process, worker_methods

logger = get_logger(__name__)

__all__ = [
    "CommunicationError",
    "ConnectionRefused",
    "KeyRefused",
    "DaemonError",
    "NothingListens",
    "ConnectionClosed",
    "PyroTimeout",
    "PyroError",
    "SecurityError",
    "Connection",
    "DialedConnection",
    "Server",
    "worker_methods",
    "configure_worker_process",
    "NS_PORT",
    "NameServer",
    "NameServerProcess",
    "name_server_uri",
    "resolve",
    "parse_uri",
    "translate",
]

CommunicationError = Pyro4.errors.CommunicationError
ConnectionClosed = Pyro4.errors.ConnectionClosedError
PyroTimeout = Pyro4.errors.TimeoutError
PyroError = Pyro4.errors.PyroError
SecurityError = Pyro4.errors.SecurityError
#: What a daemon answers a call to an object it does not serve.
DaemonError = Pyro4.errors.DaemonError

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


class NothingListens(WorkerUnavailable):
    """Nothing accepts connections at a worker's address: no worker runs there."""


def translate(exc: BaseException, uri: str, what: str = "worker") -> Exception:
    """Turn a Pyro4 error into EzPool's own, naming the ``what`` (worker, name server) at ``uri``.

    Told apart by type, never by text: ``client`` raises ``KeyRefused`` for a server's
    refusal of the key (saying whether it holds another key) and ``ConnectionRefused``
    when nothing listens; Pyro4 attaches the message it refused to the ``SecurityError``
    it raises for a message signed with its own HMAC, which EzPool no longer sends.
    """
    if isinstance(exc, KeyRefused):
        if exc.wrong_key:
            return AuthenticationError(f"{what} {uri} rejected this client's HMAC key: the key is wrong")
        return AuthenticationError(
            f"{what} {uri} and this client disagree on having an HMAC key: one side has "
            "none; set the same EZPOOL_HMAC_KEY (or hmac_key=) on both"
        )
    refused = getattr(exc, "pyroMsg", None)
    if isinstance(exc, Pyro4.errors.SecurityError) and refused is not None and "HMAC" in refused.annotations:
        return AuthenticationError(
            f"{what} {uri} signs its messages with Pyro4's own HMAC, which EzPool no longer uses: "
            "is it an older EzPool, or Pyro4's own name server? Run the same EzPool on both sides"
        )
    if isinstance(exc, ConnectionRefused):
        return NothingListens(
            f"{what} {uri} cannot be reached: connection refused. Check that it runs, "
            "that it listens on an address this machine can reach (python -m ezpool.serve "
            "listens on 127.0.0.1 unless given --host), that both sides use the same key, "
            "and that no firewall blocks the port"
        )
    return WorkerUnavailable(f"{what} {uri} cannot be reached: {exc}")
