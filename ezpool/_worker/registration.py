"""A worker keeps its own name server entry fresh, from a background thread.

Every ``refresh`` seconds, in one exchange with the name server::

    list entries under the prefix ──┬─ own name missing, or another URI ─> register it (stamped)
                                    ├─ own name present ─────────────────> re-stamp it
                                    └─ another worker's entry expired ───> remove it

So a name server that restarted (and forgot everything) learns the worker again at
the next tick, and entries of workers killed without unregistering go away. A name
server that cannot be reached is tried again at the next tick: one warning when it
goes away, one info line when the worker is registered again, never an exception
out of the thread. ``stop`` ends the thread and unregisters the name.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from typing import Optional

from .. import _pyro
from .._core.logs import get_logger
from ..errors import WorkerUnavailable
from ..naming import DEFAULT_REFRESH, NS_TIMEOUT, is_stale, last_seen, stamped

logger = get_logger(__name__)

__all__ = ["Registration"]


class Registration:
    """Keeps ``name`` registered as ``uri`` at the name server ``ns`` (``HOST[:PORT]``).

    ``prefix`` is where expired entries of other workers are looked for; ``refresh``
    is the number of seconds between two checks; ``tls`` is the client's TLS context
    for a name server served over TLS. ``ValueError`` if ``ns`` is not an
    address or ``refresh`` is not positive.
    """

    def __init__(
        self,
        ns: str,
        name: str,
        uri: str,
        prefix: str,
        hmac_key: Optional[bytes],
        refresh: float = DEFAULT_REFRESH,
        tls: Optional[ssl.SSLContext] = None,
    ) -> None:
        if not refresh > 0:
            raise ValueError(f"refresh must be a positive number of seconds, got {refresh!r}")
        self.ns = ns
        self.name = name
        self.uri = uri
        self._ns_uri = _pyro.name_server_uri(ns)
        self._prefix = prefix
        self._key = hmac_key
        self._refresh = refresh
        self._tls = tls
        self._registered: Optional[bool] = None  # None until the first answer or failure
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="ezpool-registration")

    def start(self) -> None:
        """Register now if the name server answers, then keep at it in the background.

        Raises ``AuthenticationError`` when the name server refuses this key: that is
        a mistake to fix, not an outage to wait out. A name server that is down is
        only logged; the worker registers when it comes up.
        """
        try:
            self.refresh_now()
        except _pyro.PyroError as exc:
            error = _pyro.translate(exc, self.ns, what="name server")
            if not isinstance(error, WorkerUnavailable):
                raise error from None
            self._lost(str(error))
        self._thread.start()

    def stop(self, unregister: bool = True) -> None:
        """End the thread, then unregister the name (quietly, if the name server is gone).

        A worker that restarts keeps its name (``unregister=False``): the new process
        takes it over.
        """
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(NS_TIMEOUT + 1)
        if not unregister:
            return
        try:
            with _pyro.NameServer(self._ns_uri, self._key, NS_TIMEOUT, self._tls) as server:
                server.remove(self.name)
        except Exception as exc:
            logger.debug("could not unregister %s from %s: %s", self.name, self.ns, exc)
        else:
            logger.debug("unregistered %s from %s", self.name, self.ns)

    def refresh_now(self) -> None:
        """One check: (re-)register and stamp the name, remove expired entries; ``PyroError`` if down."""
        with _pyro.NameServer(self._ns_uri, self._key, NS_TIMEOUT, self._tls) as server:
            entries = server.entries(self._prefix)
            now = time.time()
            uri, metadata = entries.get(self.name, (None, []))
            server.register(self.name, self.uri, stamped(metadata, now, self._refresh))
            for name, (_, others) in entries.items():
                if name != self.name and is_stale(others, now):
                    server.remove(name)
                    seen = last_seen(others) or now
                    logger.info("removed %s from %s: not refreshed for %.0f s", name, self.ns, now - seen)
        if self._registered is False:
            logger.info("registered %s again with the name server at %s", self.name, self.ns)
        elif uri != self.uri:
            level = logging.DEBUG if self._registered is None else logging.INFO
            logger.log(level, "registered %s as %s with the name server at %s", self.name, self.uri, self.ns)
        self._registered = True

    def _run(self) -> None:
        while not self._stopping.wait(self._refresh):
            try:
                self.refresh_now()
            except _pyro.PyroError as exc:
                self._lost(str(_pyro.translate(exc, self.ns, what="name server")))
            except Exception as exc:  # never out of this thread: the worker keeps serving
                self._lost(f"name server {self.ns} gave {type(exc).__name__}: {exc}")

    def _lost(self, reason: str) -> None:
        """Warn once per outage; the next tick tries again."""
        if self._registered is not False:
            logger.warning("%s; %s is not listed there until it answers again", reason, self.name)
        self._registered = False
