"""``Pool.amap`` and ``Pool.aimap``: a call run for ``asyncio`` without blocking its loop.

The call runs in a thread of its own, as ``map`` or ``imap`` would; the event loop
only hears from it through ``loop.call_soon_threadsafe`` and never waits::

    the event loop                              the call's thread
    ──────────────                              ─────────────────
    await pool.amap(...) ─── start ───────────▶ pool._map(..., stops) ──▶ Results
        ◀── the Results (call_soon_threadsafe) ◀─────────────────────────┘
    async for o in pool.aimap(...) ─ start ───▶ the stream of outcomes, as imap's
        ◀── wake when one is ready ◀─────────── outcomes held (at most _AHEAD of the reader)
    cancelled / left / aclose() ── stops.stop_all() ──▶ the backend stops the running
        tasks; the stream ends and is closed in its own thread

Options are checked in the loop's thread, so that a bad one raises at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any, Optional

from ._core.logs import get_logger
from ._core.stopping import Stops
from ._core.stream import Outcomes, open_outcomes
from .results import TaskOutcome

logger = get_logger(__name__)

__all__ = ["amap", "aimap"]

#: Outcomes the thread of an ``aimap`` reads ahead of the ``async for`` that consumes them.
_AHEAD = 1024

#: Longest wait, once a cancelled call was asked to stop, for its thread to see the stop
#: (a mode that cannot stop a running task lets it run on after that).
_STOPPED = 10.0


async def amap(pool: Any, mode: str, fun: Any, tasks: Iterable[Any], given: dict[str, Any]) -> Any:
    """``pool._map(mode, fun, tasks, given)`` in a thread; its ``Results``. Cancelled, it asks
    the backend to stop every task of the call and waits (a bounded time) until it has."""
    pool._settings(given)  # a bad option raises here, in the caller's task
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()
    done.add_done_callback(_retrieved)
    stops = Stops()

    def run() -> None:
        try:
            results = pool._map(mode, fun, tasks, given, stops)
        except BaseException as exc:
            _hand(loop, done, None, exc)
        else:
            _hand(loop, done, results, None)

    threading.Thread(target=run, name="ezpool-amap", daemon=True).start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        logger.debug("amap cancelled: stopping its tasks")
        stops.stop_all()
        await asyncio.wait((done,), timeout=_STOPPED)
        if not done.done():
            logger.warning("a cancelled amap still runs %.0f s after it was asked to stop", _STOPPED)
        raise


def aimap(
    pool: Any, mode: str, fun: Any, tasks: Iterable[Any], ordered: bool, given: dict[str, Any]
) -> AsyncIterator[TaskOutcome]:
    """The outcomes of ``fun`` over ``tasks`` as they finish (``ordered``: in the tasks' order),
    for ``async for``; nothing runs until the first is asked for."""
    if not isinstance(ordered, bool):
        raise TypeError(f"ordered must be True or False, got {ordered!r}")
    settings = pool._settings(given)  # a bad option raises here, at the call
    return _Outcomes(_Reader(pool, mode, fun, tasks, ordered, settings))


class _Outcomes:
    """What ``aimap`` returns: an asynchronous iterator over the outcomes its reader hands
    over. Leaving it (collected), ``aclose()``, or the consuming task cancelled while it
    waits, stops the work."""

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader
        self._close = weakref.finalize(self, reader.close)

    def __aiter__(self) -> _Outcomes:
        return self

    async def __anext__(self) -> TaskOutcome:
        reader = self._reader
        loop = asyncio.get_running_loop()
        if reader.thread is None:
            if reader.closed:
                raise StopAsyncIteration
            reader.start(loop)
        while True:
            with reader.cond:
                if reader.ready:
                    outcome = reader.ready.popleft()
                    if len(reader.ready) < _AHEAD // 2:
                        reader.cond.notify()
                    return outcome
                if reader.ended:
                    if reader.error is not None:
                        error, reader.error = reader.error, None
                        raise error
                    raise StopAsyncIteration
                waiter = reader.waiter = loop.create_future()
            try:
                await waiter
            except asyncio.CancelledError:
                self._close()
                raise

    async def aclose(self) -> None:
        """Stop the work (running tasks too) and let the stream end in its thread."""
        self._close()

    async def __aenter__(self) -> _Outcomes:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._close()


class _Reader:
    """The thread that reads one ``aimap``'s stream, and what it hands to the loop.

    It holds no reference to the ``_Outcomes`` it serves, so that one left behind is
    collected, which closes it.
    """

    def __init__(self, pool: Any, mode: str, fun: Any, tasks: Iterable[Any], ordered: bool,
                 settings: Any) -> None:
        self.call = (pool, mode, fun, tasks, ordered, settings)
        self.cond = threading.Condition()
        self.ready: deque[TaskOutcome] = deque()
        self.waiter: Optional[asyncio.Future[None]] = None  # the loop waits on it for more
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.thread: Optional[threading.Thread] = None
        self.stops = Stops()
        self.closed = False  # nothing more is wanted
        self.ended = False  # nothing more will come
        self.error: Optional[BaseException] = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.Thread(target=self.read, name="ezpool-aimap", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop the work (from any thread; never blocks): the reader closes the stream."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.cond.notify_all()
        if self.thread is not None:
            self.stops.stop_all()

    def read(self) -> None:
        error: Optional[BaseException] = None
        try:
            pool, mode, fun, tasks, ordered, settings = self.call
            # imap's stream, with the stops of this reader (closed in this thread, once left)
            outcomes = open_outcomes(lambda: pool._backend(mode), lambda: pool._workers(mode, settings), fun,
                                     tasks, settings, ordered, self.stops)
            try:
                self._hand_over(outcomes)
            finally:
                outcomes.close()
        except BaseException as exc:  # handed to the loop, which raises it
            error = exc
        with self.cond:
            self.ended = True
            self.error = None if self.closed else error
            self._wake()
        logger.debug("an aimap stream ended%s", " (closed)" if self.closed else "")

    def _hand_over(self, outcomes: Outcomes) -> None:
        """Put ``outcomes`` where the loop takes them, at most ``_AHEAD`` at a time, until closed."""
        for outcome in outcomes:
            with self.cond:
                while len(self.ready) >= _AHEAD and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                self.ready.append(outcome)
                self._wake()

    def _wake(self) -> None:
        """Wake the loop if it waits for an outcome (with ``cond`` held)."""
        waiter, self.waiter = self.waiter, None
        if waiter is not None and self.loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
                self.loop.call_soon_threadsafe(_set, waiter)


def _set(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _hand(loop: asyncio.AbstractEventLoop, done: asyncio.Future[Any], value: Any,
          error: Optional[BaseException]) -> None:
    """Settle ``done`` in the loop's thread (from any thread)."""

    def settle() -> None:
        if done.done():
            return
        if error is None:
            done.set_result(value)
        else:
            done.set_exception(error)

    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop was closed meanwhile: nobody waits any more
        logger.debug("an amap ended after its event loop closed")


def _retrieved(done: asyncio.Future[Any]) -> None:
    """Mark an error as seen, for a call whose caller stopped waiting (cancelled)."""
    if not done.cancelled():
        done.exception()
