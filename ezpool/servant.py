"""The object a distributed worker serves: it runs chunks of tasks for clients.

It is transport-free (``ezpool._pyro`` exposes it over the network); a request is
``(first, count, payloads)`` where each payload is a pickled list of tasks, and the
reply is what ``ezpool.execution.pack_chunk`` makes. One chunk runs at a time,
whoever sends it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from .execution import failed_chunk, pack_chunk, run_chunk
from .serialization import capture, loads
from .worker import BaseWorker

logger = logging.getLogger(__name__)

__all__ = ["Servant", "served_name"]


def served_name(target: Any) -> str:
    """The name a worker answers to: the class's or function's qualified name."""
    return str(getattr(target, "__qualname__", getattr(target, "__name__", repr(target))))


class Servant:
    """Runs chunks of tasks with a ``BaseWorker`` instance or a plain function."""

    def __init__(self, target: Any) -> None:
        self._name = served_name(type(target) if isinstance(target, BaseWorker) else target)
        self._run: Callable[..., Any] = target.run if isinstance(target, BaseWorker) else target
        self._lock = threading.Lock()
        self._mark = [-1]

    def describe(self) -> str:
        """What this worker serves, so that a client can check it is the right one."""
        return self._name

    def busy(self) -> bool:
        """Whether a chunk is running now."""
        return self._lock.locked()

    def run_chunk(self, first: int, count: int, payloads: list[bytes]) -> bytes:
        """Run a chunk: each task's value or exception, and its run time, pickled."""
        with self._lock:
            try:
                tasks = [task for payload in payloads for task in loads(payload)]
            except Exception as exc:
                outcome = failed_chunk(count, capture(exc))
            else:
                outcome = run_chunk(self._run, tasks, first, self._mark)
            return pack_chunk(first, outcome)
