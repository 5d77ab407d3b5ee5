"""Workers that dial in: the pool's listening address, and a link for each worker that joined.

A worker started with ``ezpool-serve --connect`` dials the pool twice (see
``ezpool._worker.dialing``). Each connection is authenticated here, the worker
first (``Connection.take_dialed``), then asked ``hello``; its identity says which
worker it belongs to. The first connection of a worker makes its ``DialLink``,
which the pool then drives as any other: chunks over one connection, the
watcher's checks over the other, with the same driver, ledger and states. What
differs is only how a connection is opened again: the pool cannot dial the
worker, so a ``DialedConnection`` takes the next connection the worker dials in
on (``DialLink.take``)::

    accept thread                 admitting thread (one per connection, at most
    ─────────────                 ``ADMITTING`` at once, each ``PREAUTH_SECONDS``;
                                  past them, the oldest is hung up on)
    accept() ───────────────────▶ take_dialed: the key, both ways, the worker first
                                  hello() ─▶ identity
                                  new worker: a DialLink, READY ─▶ on_join(link)
                                  known one: its next connection (link.arrivals)
                                  ezpool.status: its workers' status (pool_status)
"""

from __future__ import annotations

import collections
import contextlib
import queue
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from ... import _pyro
from ..._core.listen_file import parse_address, remove_listen_file, write_listen_file
from ..._core.logs import get_logger
from ...errors import WorkerUnavailable
from .links import Link
from .pool_status import answer_status, wants_status

logger = get_logger(__name__)

__all__ = ["Listener", "DialLink", "DialAddress", "default_host", "ADMITTING"]

#: Connections that may be authenticating at once; more wait in the system's backlog.
ADMITTING = 64
#: Seconds a dialed connection has to authenticate and say hello.
PREAUTH_SECONDS = 5.0


class DialAddress(NamedTuple):
    """Where a dial-in worker's connections come from, in place of a ``PYRO:`` URI."""

    host: str
    port: int
    protocol: str = "DIAL"
    object: str = "worker"

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class DialLink(Link):
    """A worker that dialed in: its connections are those it dials, taken as they come."""

    def __init__(
        self, text: str, address: DialAddress, key: Optional[bytes], tls: Optional[ssl.SSLContext],
        info: dict[str, Any],
    ) -> None:
        super().__init__(text, address, key, tls)
        self.address = address
        self.arrivals: queue.SimpleQueue[_pyro.Connection] = queue.SimpleQueue()
        self.admit(info)
        self.reconnect(self.heartbeat)  # the watcher's checks wait heartbeat seconds at most

    def take(self, timeout: float) -> Optional[_pyro.Connection]:
        """The next connection this worker dialed in on that is still open, waiting up to
        ``timeout`` seconds; ``None`` if none came."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                connection = self.arrivals.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if connection.idle:
                return connection
            connection.close()

    def reconnect(self, timeout: Optional[float]) -> None:
        self.release()
        self.connection = _pyro.DialedConnection(self.address, self.key, None, self.tls, self.take)
        self.pinger = _pyro.DialedConnection(self.address, self.key, timeout, self.tls, self.take)

    @property
    def gone(self) -> bool:
        """Neither connection is open, and the worker has not dialed in again."""
        return not any(c is not None and c.idle for c in (self.connection, self.pinger)) \
            and self.arrivals.empty()

    def bye(self) -> None:
        """Tell the worker the pool closes (it leaves, unless told to stay), and hang up."""
        for connection in (self.connection, self.pinger):
            if connection is not None and connection.is_open:
                connection.call_if_idle("bye", 1.0)  # never waits behind a call another thread makes
        while True:
            try:
                spare = self.arrivals.get_nowait()
            except queue.Empty:
                break
            spare.call_if_idle("bye", 1.0)
            spare.close()
        self.release()


class Listener:
    """Listens at ``address`` for workers that dial in, for the life of a pool.

    ``on_join(link)`` is called (from a thread of the listener's) for each worker
    that joins; ``refused`` lists why workers that dialed were refused (most recent
    last), for the pool to say when none joins.
    """

    def __init__(
        self, address: str, key: Optional[bytes], tls: Optional[ssl.SSLContext],
        listen_file: Optional[str] = None,
    ) -> None:
        host, port = parse_address(address)
        self.key, self.tls = key, tls
        try:
            self._sock = socket.create_server((host or default_host(), port), backlog=256)
        except OSError as exc:
            raise WorkerUnavailable(
                f"the pool cannot listen on {address!r}: {exc.strerror or exc}. Give listen= an address "
                "of this machine that the workers can reach (HOST:PORT; port 0 picks a free one)"
            ) from None
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.address = f"{bound_host}:{bound_port}"
        self.listen_file = listen_file
        self.links: dict[str, DialLink] = {}
        self.refused: list[str] = []
        self.on_join: Optional[Callable[[DialLink], None]] = None
        self._lock = threading.Lock()
        self._joined = threading.Condition(self._lock)
        # Connections authenticating now, oldest first: a stranger that dials and stands
        # still costs a slot for PREAUTH_SECONDS at most, and gives it up to a newer one.
        self._admitting: collections.OrderedDict[int, socket.socket] = collections.OrderedDict()
        self._closed = False
        if listen_file:
            try:
                write_listen_file(Path(listen_file), self.address, tls is not None)
            except BaseException:
                self._sock.close()
                raise
        self._thread = threading.Thread(target=self._accept, name="ezpool-listen", daemon=True)
        self._thread.start()
        logger.info("the pool listens for workers at %s%s", self.address,
                    f" (written to {listen_file})" if listen_file else "")

    def ready(self) -> list[DialLink]:
        """The workers that joined and are still there (those gone are forgotten)."""
        with self._lock:
            for identity, link in list(self.links.items()):
                if link.gone or link.left:
                    del self.links[identity]
                    link.release()
            return list(self.links.values())

    @property
    def closed(self) -> bool:
        return self._closed

    def wait(self, seconds: float) -> list[DialLink]:
        """The workers there now, waiting up to ``seconds`` for the first one."""
        deadline = time.monotonic() + seconds
        with self._joined:
            while not self.links and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._joined.wait(left)
        return self.ready()

    def close(self) -> None:
        """Stop listening; tell every worker the pool closes."""
        with self._lock:
            self._closed = True
            links, self.links = list(self.links.values()), {}
            self._joined.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(2)
        for link in links:
            link.bye()
        if self.listen_file:
            remove_listen_file(Path(self.listen_file), self.address)

    # --- threads ---------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, peer = self._sock.accept()
            except OSError:
                if self._closed:
                    return
                time.sleep(0.05)  # out of descriptors, say: try again
                continue
            with self._lock:
                self._admitting[id(sock)] = sock
                oldest = self._admitting.popitem(last=False)[1] if len(self._admitting) > ADMITTING else None
            if oldest is not None:
                logger.debug("too many connections authenticating at once: hanging up the oldest")
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)
            threading.Thread(target=self._admit, args=(sock, peer), daemon=True, name="ezpool-admit").start()

    def _admit(self, sock: socket.socket, peer: Any) -> None:
        address = DialAddress(str(peer[0]), int(peer[1]))
        connection = _pyro.Connection(address, self.key, PREAUTH_SECONDS, self.tls)
        try:
            connection.take_dialed(sock)
            info = connection.call("hello")
            if not isinstance(info, dict) or not info.get("identity"):
                raise _pyro.PyroError("it did not say who it is: is it an EzPool worker?")
        except (_pyro.KeyRefused, _pyro.SecurityError) as exc:
            logger.warning("refused a worker that dialed in from %s: %s", address.host, exc)
            with self._lock:
                self.refused = [*self.refused[-9:], str(exc)]
            connection.close()
            return
        except Exception as exc:
            logger.debug("a connection from %s:%d did not join: %s", address.host, address.port, exc)
            connection.close()
            return
        finally:
            with self._lock:
                self._admitting.pop(id(sock), None)
        if wants_status(info):  # a key holder asks who joined (python -m ezpool.status --pool)
            answer_status(connection, list(self.links.values()), info)  # not ready(): it waits for chunks
            return
        connection.timeout = None
        self._arrived(connection, address, dict(info))

    def _arrived(self, connection: _pyro.Connection, address: DialAddress, info: dict[str, Any]) -> None:
        identity = str(info["identity"])
        with self._lock:
            if self._closed:
                link = None
            else:
                link = self.links.get(identity)
                new = link is None
                if link is None:
                    text = f"{info.get('host', address.host)}:{info.get('pid', '?')}"
                    link = self.links[identity] = DialLink(text, address, self.key, self.tls, info)
                    self._joined.notify_all()
                link.arrivals.put(connection)
        if link is None:
            with contextlib.suppress(Exception):
                connection.call("bye")
            connection.close()
            return
        if new:
            logger.info("worker %s joined from %s", link.text, address.host)
            on_join = self.on_join
            if on_join is not None:
                on_join(link)


def default_host() -> str:
    """The address workers on other machines reach this one at: the address this
    machine's name resolves to, unless that means this machine only (Debian maps
    the host name to 127.0.1.1), then the address of the interface that would carry
    traffic out; loopback only where there is no other."""
    with contextlib.suppress(OSError):
        address = socket.gethostbyname(socket.gethostname())
        if not address.startswith("127."):
            return address
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        address = str(probe.getsockname()[0])
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    logger.warning(
        "this machine has no address but loopback (127.0.0.1): only workers on this machine can "
        "dial in; give listen='HOST:PORT' with an address the workers reach"
    )
    return "127.0.0.1"
