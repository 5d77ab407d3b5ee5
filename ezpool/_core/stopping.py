"""Requests to stop work that already runs, from any thread, to the backend of one call.

Closing a stream stops the work it started, but only from the thread that iterates
it. What must stop running tasks from elsewhere (a future cancelled while its call
runs, ``shutdown(cancel_futures=True)``, an ``asyncio`` task cancelled while it
awaits ``amap``) asks through a ``Stops`` given to ``Backend.run``::

    any thread ── stops.stop(positions) / stops.stop_all() ──▶ wakers (a pipe, a condition)
    the backend's loop ── stops.take() ──▶ ({positions}, everything?) ──▶ kills the workers
        running them (replaced), yields each stopped task once as a ``CancelledError``

A position not yet sent is dropped when taken (its outcome is the ``CancelledError``);
one that already finished is left alone. ``stop_all`` stops every task of the call:
the backend ends its stream at once, as if the caller had closed it, but without
waiting for running tasks to finish.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Callable

from .logs import get_logger

if TYPE_CHECKING:
    from concurrent.futures import CancelledError

logger = get_logger(__name__)

__all__ = ["Stops", "cancelled"]


class Stops:
    """Positions of one call's tasks to stop, asked from any thread; read by its backend."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._positions: set[int] = set()
        self._everything = False
        self._wakers: list[Callable[[], object]] = []

    def stop(self, positions: Iterable[int]) -> None:
        """Stop the tasks at ``positions`` (of the stream's tasks) wherever they are."""
        with self._lock:
            self._positions.update(positions)
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    def stop_all(self) -> None:
        """Stop every task of the call, running or not, and end its stream."""
        with self._lock:
            self._everything = True
            wakers = list(self._wakers)
        for wake in wakers:
            wake()

    @property
    def everything(self) -> bool:
        """Whether ``stop_all`` was asked (it stays asked)."""
        return self._everything

    @property
    def asked(self) -> bool:
        """Whether anything waits to be taken (cheap: for a backend's loop to test often)."""
        return bool(self._positions) or self._everything

    def take(self) -> tuple[set[int], bool]:
        """The positions asked since the last ``take``, and whether everything is to stop."""
        with self._lock:
            positions, self._positions = self._positions, set()
            return positions, self._everything

    def add_waker(self, wake: Callable[[], object]) -> None:
        """Call ``wake()`` (from the asking thread; it must not block) whenever a stop is asked."""
        with self._lock:
            self._wakers.append(wake)

    def remove_waker(self, wake: Callable[[], object]) -> None:
        with self._lock:
            if wake in self._wakers:
                self._wakers.remove(wake)


def cancelled(task: object) -> CancelledError:
    """The outcome of a task stopped while it ran or waited to (``concurrent.futures.CancelledError``)."""
    from concurrent.futures import CancelledError  # here: it costs a cold start a good deal

    return CancelledError(f"task {task!r} was cancelled")
