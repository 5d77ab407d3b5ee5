"""The serial mode: a plain loop in the calling process."""

from __future__ import annotations

import os
import socket
from collections.abc import Generator, Iterator, Sequence
from time import perf_counter
from typing import Any, Callable, Optional, Union

from .._core.feed import Feed
from .._core.logs import get_logger
from .._core.recording import Recording
from .._core.records import Batch
from .._core.stopping import Stops
from .._core.tasks import bind, call
from ..errors import EzPoolError
from ..options import Options
from .base import Backend

logger = get_logger(__name__)

__all__ = ["SerialBackend"]

#: Seconds between batches when nobody needs to hear of every task at once.
_FLUSH_EVERY = 0.05

#: Most tasks read from a feed at a time.
_READ_AHEAD = 4096


class SerialBackend(Backend):
    """Runs each task in turn in this process; an exception is kept, not raised."""

    mode = "serial"

    def run(
        self, fun: Callable[..., Any], tasks: Sequence[Any], options: Options, per_task: bool,
        record: Recording, stops: Optional[Stops] = None,
    ) -> Generator[Batch, None, None]:
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {fun!r}")
        if options.timeout is not None:
            logger.debug("serial mode cannot stop a running task; timeout=%s ignored", options.timeout)
        if options.capture_output:
            logger.debug("serial mode: tasks write here directly; capture_output ignored")
        fun = bind(fun, options.context)
        worker = f"pid {os.getpid()}"
        record.worker(worker, socket.gethostname(), os.getpid(), same_clock=True)
        runs = _read(tasks) if isinstance(tasks, Feed) else iter([(0, tasks)])
        for run in runs:
            if isinstance(run, Batch):  # known already (from a store)
                yield run
            else:
                yield from _compute(fun, *run, worker, per_task)
            del run  # while a live source waits for more, hold none of these tasks


def _compute(
    fun: Callable[..., Any], start: int, tasks: Sequence[Any], worker: str, per_task: bool
) -> Iterator[Batch]:
    """Run consecutive tasks, the first at position ``start``; a batch every so often."""
    values: list[Any] = []
    times: list[float] = []
    failed: set[int] = set()
    flushed = origin = perf_counter()
    for position, task in enumerate(tasks, start):
        began = perf_counter()
        if not values:
            origin = began
        try:
            value = call(fun, task)
        except Exception as exc:
            value = exc
            failed.add(position - start)
        finished = perf_counter()
        values.append(value)
        times.append(finished - began)
        if per_task or finished - flushed >= _FLUSH_EVERY:
            yield _batch(start, values, times, failed, worker, origin)
            start, values, times, failed = position + 1, [], [], set()
            flushed = finished
    if values:
        yield _batch(start, values, times, failed, worker, origin)


def _batch(
    start: int, values: list[Any], times: list[float], failed: set[int], worker: str, origin: float
) -> Batch:
    batch = Batch(start, values, times, failed, worker)
    batch.origin = origin
    return batch


def _read(feed: Feed) -> Iterator[Union[Batch, tuple[int, Sequence[Any]]]]:
    """A feed's tasks in runs ``(start, tasks)``, and the outcomes known without running.

    A run is one task at first, and twice as many each time the last took less than
    ``_FLUSH_EVERY``, so slow tasks are read one by one and fast ones by the thousand.
    From a live source (an executor's) a task is read only when it is about to run:
    until then, it may still be cancelled.
    """
    ahead, most = 1, 1 if feed.trickles else _READ_AHEAD
    while not feed.exhausted:
        began = perf_counter()
        runs = feed.pull(ahead)
        settled = feed.settled()
        yield from settled
        for start, stop in runs:
            yield start, feed[start:stop]
        if not runs and not settled and not feed.exhausted:
            if feed.live is None or not feed.room():
                raise EzPoolError(f"no room to read more tasks: {feed.held} are held")
            feed.wait()  # a live source: until more tasks arrive
            continue
        quick = perf_counter() - began < _FLUSH_EVERY
        ahead = min(2 * ahead, most) if quick else max(1, ahead // 2)
