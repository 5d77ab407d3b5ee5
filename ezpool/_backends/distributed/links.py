"""A worker as the client sees it: its address, its identity, and its state.

A link's state changes only through ``Link.on(event)``: the driver, the watcher
and the backend report what they saw, and ``MOVES`` (in the manner of h11's
``_state.py``) says what state follows. Nothing else writes a state; a pair that
is not in the table is a bug::

    NEW ──CHECKED──▶ READY ──SENT──▶ RUNNING ──IDLE (its last answer)──▶ READY
     │                 ▲              │  │
     │                 │ CHECKED      │  └─ SILENT: no answered check for ``heartbeat`` s ─▶ SILENT
     └─▶ LOST ◀────────┼──────────────┘     (the watcher breaks the call off)                │
          ▲            │   UNREACHABLE, UNFIT, REPLACED, RESTARTING, FAILED, LEFT             │
          └────────────┴──────────────── BROKEN (its connection, while SILENT) ◀─────────────┘

A connection that breaks while RUNNING leaves the link RUNNING: the driver then
asks the worker who it is, and reports what it learnt (IDLE if the same process
answers: its chunk goes again at no cost; UNREACHABLE, REPLACED or CHECKED if not).
"""

from __future__ import annotations

import enum
import ssl
import threading
import time
from typing import Any, Optional

from ... import _pyro
from ..._core.deaths import Watched
from ..._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["State", "LinkEvent", "MOVES", "Link"]


class State(enum.Enum):
    NEW = "new"  # never checked
    READY = "ready"  # checked: its identity is known and it serves what the call runs
    RUNNING = "running"  # a chunk is in flight
    SILENT = "silent"  # it stopped answering checks mid-chunk; the call is being broken off
    LOST = "lost"  # unreachable, replaced, restarting or serving something else


class LinkEvent(enum.Enum):
    """What the driver, the watcher or the backend saw of a worker."""

    CHECKED = "answered a check, and may run the call"
    UNFIT = "answered a check, but may not run the call"
    UNREACHABLE = "a connection or a check failed"
    SENT = "a chunk was sent"
    ANSWERED = "answered a chunk, and holds more"
    IDLE = "holds nothing any more"
    SILENT = "left a check unanswered for heartbeat seconds"
    BROKEN = "its connection broke"
    RESTARTING = "restarts: to stop a task, or to be replaced after max_tasks_per_worker"
    REPLACED = "another process answers at its address"
    FAILED = "the thread driving it failed"
    LEFT = "left its pool (told to stop, or its job ends): it comes back no more"


_N, _R, _U, _S, _L = State.NEW, State.READY, State.RUNNING, State.SILENT, State.LOST
_E = LinkEvent

#: Every state, and what each event there leads to.
MOVES: dict[State, dict[LinkEvent, State]] = {
    _N: {_E.CHECKED: _R, _E.UNFIT: _L, _E.UNREACHABLE: _L, _E.FAILED: _L},
    _R: {
        _E.CHECKED: _R, _E.SENT: _U, _E.IDLE: _R, _E.SILENT: _R, _E.BROKEN: _R, _E.UNREACHABLE: _L,
        _E.UNFIT: _L, _E.RESTARTING: _L, _E.REPLACED: _L, _E.FAILED: _L,
    },
    _U: {
        _E.SENT: _U, _E.ANSWERED: _U, _E.IDLE: _R, _E.CHECKED: _R, _E.SILENT: _S, _E.BROKEN: _U,
        _E.UNREACHABLE: _L, _E.UNFIT: _L, _E.RESTARTING: _L, _E.REPLACED: _L, _E.FAILED: _L,
    },
    _S: {
        _E.ANSWERED: _S, _E.IDLE: _R, _E.SILENT: _S, _E.BROKEN: _L, _E.CHECKED: _R, _E.UNREACHABLE: _L,
        _E.UNFIT: _L, _E.RESTARTING: _L, _E.REPLACED: _L, _E.FAILED: _L,
    },
    _L: {
        _E.CHECKED: _R, _E.IDLE: _L, _E.SILENT: _L, _E.BROKEN: _L, _E.UNREACHABLE: _L, _E.UNFIT: _L,
        _E.RESTARTING: _L, _E.REPLACED: _L, _E.FAILED: _L,
    },
}
for _moves in MOVES.values():  # a worker may leave whatever it was doing
    _moves[_E.LEFT] = _L


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
        self.lost_by: Optional[LinkEvent] = None  # the event that made it LOST
        self.since = time.monotonic()  # when it entered its state
        self.alive_at = self.since  # the latest proof of life seen while RUNNING
        self.pinging: Any = None  # the watcher's check in flight, if any
        # What the worker said it ran at its latest answered check, and when that check
        # was sent: (fid, first position of the chunk, mark, sent), see ``Servant.ping``.
        self.running: Optional[tuple[str, int, int, float]] = None
        self.heartbeat = 10.0
        self.connection: Optional[_pyro.Connection] = None  # the connection chunks travel on
        self.pinger: Optional[_pyro.Connection] = None  # the connection the watcher's checks travel on
        self.process: Optional[Watched] = None  # the worker process this pool started for it, if any
        self.left = False  # it left for good (a worker that dialed in): no call waits for it
        # When a call asked it to stop (it restarts), and the identity it had then.
        self.stopped: Optional[tuple[float, str]] = None
        self._lock = threading.Lock()

    @property
    def identity(self) -> str:
        return str(self.info.get("identity", ""))

    @property
    def serves(self) -> str:
        return str(self.info.get("serves", ""))

    def on(self, event: LinkEvent, reason: str = "") -> State:
        """What happened to the worker: the table moves the link; the state it is in now.
        ``reason`` says why, where the link is LOST after it."""
        with self._lock:
            before = self.state
            after = MOVES[before].get(event)
            if after is None:
                raise AssertionError(f"worker {self.text}: {event.name} cannot happen while {before.name}")
            now = time.monotonic()
            changed = after is not before
            if changed or (after is State.LOST and reason):  # a lost worker's latest news counts
                self.state, self.since = after, now
                self.reason = reason if after is State.LOST else ""
                self.lost_by = event if after is State.LOST else None
            if event in (LinkEvent.SENT, LinkEvent.ANSWERED):
                self.alive_at = now
            if event is LinkEvent.LEFT:
                self.left = True
        if changed:
            logger.debug("worker %s: %s (%s)%s", self.text, after.name, event.value,
                         f": {reason}" if reason else "")
        return after

    def admit(self, info: dict[str, Any]) -> None:
        """It answered a check as a worker that may run the call: remember who it is."""
        if info.get("identity") != self.identity:
            self.loaded = set()  # a new process has none of the code the old one had
        self.info = info
        self.on(LinkEvent.CHECKED)

    def open(self, timeout: float) -> None:
        """Open the connection chunks travel on, if it is not, waiting at most ``timeout``
        seconds to connect (a stopped worker's system still accepts connections); its
        answers are then awaited as long as its chunks run."""
        connection = self.connection
        assert connection is not None
        saved = connection.timeout
        connection.timeout = timeout
        try:
            connection.open()
        finally:
            connection.timeout = saved

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
