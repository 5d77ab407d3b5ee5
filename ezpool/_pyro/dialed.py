"""The connection to a worker that dialed in to the pool: it cannot be opened from this side."""

from __future__ import annotations

import contextlib
import ssl
from typing import Any, Callable, Optional

import Pyro4.errors

from .client import Connection, _hung_up

__all__ = ["DialedConnection", "REDIAL_WAIT"]


class DialedConnection(Connection):
    """The connection to a worker that dials in: it cannot be opened from this side.

    ``open`` takes the next connection that worker dialed in on (already
    authenticated, see ``Connection.take_dialed``) from ``arrivals``, waiting up to
    the connection's timeout (``REDIAL_WAIT`` without one), and raises
    ``ConnectionClosedError`` if none came.
    """

    def __init__(
        self,
        uri: Any,
        key: Optional[bytes],
        timeout: Optional[float],
        tls: Optional[ssl.SSLContext],
        arrivals: Callable[[float], Optional[Connection]],
    ) -> None:
        super().__init__(uri, key, timeout, tls)
        self._arrivals = arrivals

    def open(self) -> None:
        with self._lock:
            if self.is_open and (self._sent or not _hung_up(self._sock)):
                return
            self.close()
            fresh = self._arrivals(self._timeout or REDIAL_WAIT)
            if fresh is None:
                raise Pyro4.errors.ConnectionClosedError(f"{self.uri} has not dialed in again")
            with fresh._lock:
                self._connection, self._sock, fresh._connection, fresh._sock = (
                    fresh._connection, fresh._sock, None, None)
                self._nonce, self._counter, self._seq = fresh._nonce, fresh._counter, fresh._seq
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.settimeout(self._timeout)


#: Seconds ``DialedConnection.open`` waits for its worker to dial in again, where the
#: connection has no timeout of its own.
REDIAL_WAIT = 5.0
