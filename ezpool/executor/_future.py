"""The future of a submitted call, which can be cancelled while it runs.

``concurrent.futures.Future.cancel`` refuses a call that runs. A call whose mode
can stop a running task (its worker is killed and replaced: the parallel and
distributed modes) gets a ``CallFuture``: once its task is taken into the stream
it knows where (``stop``: the stream's ``Stops`` and the task's position there),
and ``cancel()`` asks that stop and ends the future cancelled at once::

    PENDING ── cancel() ──▶ CANCELLED ── taken ──▶ CANCELLED_AND_NOTIFIED   (never runs)
    PENDING ── taken ──▶ RUNNING ── cancel() ──▶ CANCELLED_AND_NOTIFIED + stops.stop([position])
    RUNNING ── its outcome ──▶ FINISHED (an outcome that comes after the cancel is dropped)

Waiters (``wait``, ``as_completed``) and done-callbacks hear of it as of any cancel.
"""

from __future__ import annotations

import concurrent.futures
from concurrent.futures import InvalidStateError, _base
from typing import TYPE_CHECKING, Any, Optional

from .._core.logs import get_logger

if TYPE_CHECKING:
    from .._core.stopping import Stops

logger = get_logger(__name__)

__all__ = ["CallFuture", "settle_future"]


class CallFuture(concurrent.futures.Future[Any]):
    """A ``Future`` whose ``cancel()`` stops the call if it runs (see the module's picture)."""

    #: Where its task runs, once taken: the stream's stops and the task's position.
    stop: Optional[tuple[Stops, int]] = None

    def cancel(self) -> bool:
        """Cancel the call, running or not; False only once it has finished."""
        with self._condition:
            stop = self.stop if self._state == _base.RUNNING else None
            if stop is not None:
                self._state = _base.CANCELLED_AND_NOTIFIED
                for waiter in self._waiters:
                    waiter.add_cancelled(self)
                self._condition.notify_all()
        if stop is None:
            return super().cancel()
        stops, position = stop
        logger.debug("a running call is cancelled: stopping its task %d", position)
        stops.stop((position,))
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True


def settle_future(
    future: concurrent.futures.Future[Any], value: Any = None, error: Optional[BaseException] = None
) -> None:
    """Set a running call's outcome, unless it was cancelled meanwhile (then it is dropped)."""
    try:
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
    except InvalidStateError:
        if not future.cancelled():
            raise
