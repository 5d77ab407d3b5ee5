"""A worker as the client sees it: its address, its identity, and its state.

Every state a worker can be in, and every move between them, is in ``MOVES``;
``Link.move`` refuses any other, so the dispatcher's code only ever asks "what
now?" of a state it can name::

    NEW ──check──▶ READY ──chunk sent──▶ RUNNING ──reply──▶ READY
     │               ▲                    │  │
     │               │ answers again      │  └─ no sign of life for ``heartbeat`` s ─▶ SILENT
     └─▶ LOST ◀──────┼────────────────────┘      (the watcher breaks the call off)      │
          ▲          │   connection broken and the process gone or replaced            │
          └──────────┴─────────────────────────────────────────────────────────────────┘

A connection that breaks while the *same* process still answers is not a lost
worker: the link goes back to READY and its chunk is sent again at no cost.
"""

from __future__ import annotations

import enum
import ssl
import threading
import time
from typing import Any, Optional

from ... import _pyro
from ..._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["State", "MOVES", "Link"]


class State(enum.Enum):
    NEW = "new"  # never checked
    READY = "ready"  # checked: its identity is known and it serves what the call runs
    RUNNING = "running"  # a chunk is in flight
    SILENT = "silent"  # it stopped answering checks mid-chunk; the call is being broken off
    LOST = "lost"  # unreachable, replaced, restarting or serving something else


#: The only moves a link may make.
MOVES: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.READY, State.LOST}),
    State.READY: frozenset({State.RUNNING, State.READY, State.LOST}),
    State.RUNNING: frozenset({State.READY, State.SILENT, State.LOST}),
    State.SILENT: frozenset({State.LOST, State.READY}),
    State.LOST: frozenset({State.READY, State.LOST}),
}


class Link:
    """One worker URI, kept by the backend for the life of the pool.

    Attributes:
        text: the URI as the user gave it (results name workers by it).
        uri: the parsed URI (``PYRO:`` or ``PYRONAME:``).
        address: the ``PYRO:`` URI it resolved to most recently.
        info: what the worker said of itself when last checked (``hello``).
        reason: why it is LOST.
    """

    def __init__(
        self, text: str, uri: Any, key: Optional[bytes], tls: Optional[ssl.SSLContext] = None
    ) -> None:
        self.text = text
        self.uri = uri
        self.key = key
        self.tls = tls
        self.address: Any = uri if uri.protocol == "PYRO" else None
        self.info: dict[str, Any] = {}
        self.loaded: set[str] = set()  # ids of the code a generic worker has loaded
        self.state = State.NEW
        self.reason = ""
        self.since = time.monotonic()  # when it entered its state
        self.alive_at = self.since  # the latest proof of life seen while RUNNING
        self.pinging: Any = None  # the watcher's check in flight, if any
        self.heartbeat = 10.0
        self.connection: Optional[_pyro.Connection] = None  # the connection chunks travel on
        self.pinger: Optional[_pyro.Connection] = None  # the connection the watcher's checks travel on
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        return str(self.info.get("identity", ""))

    @property
    def serves(self) -> str:
        return str(self.info.get("serves", ""))

    def move(self, state: State, reason: str = "") -> bool:
        """Enter ``state``; returns whether it changed. A move not in ``MOVES`` is a bug."""
        with self._lock:
            if state not in MOVES[self.state]:
                raise AssertionError(f"worker {self.text}: no move from {self.state.name} to {state.name}")
            changed = state is not self.state
            self.state, self.since = state, time.monotonic()
            if state is State.RUNNING:
                self.alive_at = self.since
            self.reason = reason if state is State.LOST else ""
        if changed:
            logger.debug("worker %s: %s%s", self.text, state.name, f" ({reason})" if reason else "")
        return changed

    def silence(self) -> bool:
        """The watcher's verdict: RUNNING with no sign of life; break the call off."""
        with self._lock:
            if self.state is not State.RUNNING:
                return False
            self.state, self.since = State.SILENT, time.monotonic()
        if self.connection is not None:
            self.connection.abort()
        return True

    def admit(self, info: dict[str, Any]) -> None:
        """It answered a check: remember who it is, and make it READY."""
        if info.get("identity") != self.identity:
            self.loaded = set()  # a new process has none of the code the old one had
        self.info = info
        self.move(State.READY)

    def reconnect(self, timeout: Optional[float]) -> None:
        """New connections, for a new key or after a straggling thread kept the old ones."""
        self.release()
        self.connection = _pyro.Connection(self.address, self.key, None, self.tls)
        self.pinger = _pyro.Connection(self.address, self.key, timeout, self.tls)

    def release(self) -> None:
        for connection in (self.connection, self.pinger):
            if connection is not None:
                connection.close()
        self.connection = self.pinger = None

    def __repr__(self) -> str:
        return f"Link({self.text!r}, {self.state.name})"
