"""What a worker has done since it started, and whom it works for now: its ``status``.

The servant tells an ``Activity`` when a chunk starts (and for which client: the
address its connection comes from, which for a worker that dialed in is its
pool's listening address) and when it ends (how many tasks ran, how many
failed). ``status`` puts that together with what the worker says of itself at
``hello``, as a dict of strings and numbers that travels in ``marshal``; it is
what ``python -m ezpool.status`` shows. Asked only over a connection that proved
the key, as every call of a worker is.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["Activity", "STATUS_FIELDS"]

#: What ``hello`` says that a status shows too (the rest of ``hello`` stays out).
STATUS_FIELDS = ("host", "pid", "serves", "platform", "python", "ezpool", "restarting")


class Activity:
    """Counts a worker's chunks and tasks, and remembers whom the running chunk is for."""

    def __init__(self, target: Any = None) -> None:
        """``target``: what the worker serves (``None``: whatever clients send)."""
        self.started = time.time()
        self._began = time.monotonic()
        self._module = str(getattr(target, "__module__", "") or "") if target is not None else ""
        self._lock = threading.Lock()
        self.chunks = 0
        self.tasks = 0
        self.failed = 0
        self._client = ""  # the client of the running chunk
        self._since = 0.0  # when it started (monotonic)

    def began(self, client: str) -> None:
        """A chunk for ``client`` (its address, ``host:port``) starts running."""
        with self._lock:
            self._client, self._since = client, time.monotonic()

    def ended(self, tasks: int, failed: int) -> None:
        """The running chunk ended: ``tasks`` tasks ran, ``failed`` of them failed."""
        with self._lock:
            self.chunks += 1
            self.tasks += tasks
            self.failed += failed

    def status(self, hello: dict[str, Any], running: Any, leaving: bool) -> dict[str, Any]:
        """The worker's status: ``hello``'s answer, ``running`` as ``Servant.ping`` says it
        (``False``, or ``(fid, first, mark)``), and whether it is leaving its pool."""
        now = time.monotonic()
        row = {name: hello.get(name) for name in STATUS_FIELDS}
        serves = str(hello.get("serves", ""))
        row["serves"] = "generic" if serves == "*" else f"{self._module}:{serves}" if self._module else serves
        busy = isinstance(running, (tuple, list)) and len(running) == 3
        with self._lock:
            row.update(
                uptime=round(now - self._began, 3), started=self.started, chunks=self.chunks,
                tasks=self.tasks, failed=self.failed, busy=busy, leaving=bool(leaving),
                client=self._client if busy else "", busy_for=round(now - self._since, 3) if busy else 0.0,
                task=int(running[2]) if busy else -1,
            )
        return row
