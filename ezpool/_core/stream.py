"""The one stream every call goes through: a backend's batches, each stored, shown and counted once.

``map`` collects a stream into ``Results`` (``Pool``, with de-duplication and the
outcomes a store already holds); ``imap`` hands its outcomes on as they come
(``outcomes``); ``PoolExecutor`` settles futures from it. Whatever consumes it,
each batch has first been::

    backend.run(fun, tasks) ── Batch ──▶ (with ``retries``: failures to retry kept back, see retrying)
                                         stored (sweep.record, with ``store=``)
                                         shown  (what tasks printed, with ``capture_output``)
                                         counted (progress: the bar, the hook)
                                         ──▶ yielded to the consumer
"""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence, Sized
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any, Callable, Optional, Union, cast

from ..results import TaskOutcome
from .feed import Feed, Live
from .logs import get_logger
from .progress import Progress
from .recording import Recording, settings_of
from .records import Batch
from .relay import Relay
from .retrying import Failure, RetryFeed, open_retries
from .stopping import Stops
from .tasks import iterate_tasks

if TYPE_CHECKING:
    from .._backends.base import Backend
    from ..options import Options
    from ..store import Sweep

logger = get_logger(__name__)

__all__ = ["stream", "open_feed", "open_sweep", "open_recording", "open_outcomes", "outcomes", "Outcomes",
           "placed", "default_buffer", "write_outputs"]

if TYPE_CHECKING:
    _Chain = chain[TaskOutcome]
else:
    _Chain = chain

#: ``imap``'s default ``buffersize``: this many tasks per worker, and never fewer than the least.
_BUFFER_PER_WORKER = 16384
_BUFFER_LEAST = 65536


def stream(
    backend: Backend,
    fun: Callable[..., Any],
    tasks: Sequence[Any],
    options: Options,
    sweep: Optional[Sweep] = None,
    total: Optional[int] = None,
    eager: bool = False,
    record: Optional[Recording] = None,
    stops: Optional[Stops] = None,
    failure: Optional[Failure] = None,
) -> Generator[Batch, None, None]:
    """``fun`` over ``tasks`` (a list of distinct tasks, or a ``Feed``) on ``backend``: each
    batch as it finishes, once recorded in ``sweep``, relayed, counted and kept in ``record``.

    ``total`` is the number of tasks, where known (for the progress bar); ``eager`` asks
    for every outcome as soon as it is known, even where waiting would batch more.
    Closing the generator stops the work; ``stops`` asks the backend, from other
    threads, to stop tasks that run (``ezpool._core.stopping``). ``failure`` finds the
    exception of a task that failed inside its value, for ``retries`` (an executor's
    call). Without ``record`` one is made that keeps only which workers are live,
    unless a trace or report is asked for; the trace and report in ``options`` are
    written when the stream ends (``map`` writes its own). With ``retries``, the
    backend runs a ``RetryFeed`` of runs, and each batch is turned back into the
    call's positions here (``ezpool._core.retrying``).
    """
    if record is None:
        record = open_recording(tasks, backend.mode, options)
    live = record.live if backend.mode == "distributed" else None
    progress = Progress(options.progress, options.msg, tasks, total, live)
    relay = Relay(tasks, progress)
    retrying = open_retries(tasks, options, failure)
    if retrying is not None:
        record.reading(retrying)  # it numbers runs, not tasks
    runs = tasks if retrying is None else retrying
    if retrying is not None:
        stops = retrying.stops(stops)
    batches = backend.run(fun, runs, options, progress.per_task or eager, record, stops)
    try:
        for batch in batches:
            for part, final in _settled(batch, retrying, record):
                if part.outputs:
                    relay.show(part)
                if not final:  # its task runs again: only the last run is kept and counted
                    continue
                if sweep is not None and not part.stored:
                    sweep.record(tasks, part.start, part.values, part.elapsed, part.failed, part.worker)
                progress.update(part)
                yield part
    finally:
        batches.close()
        if retrying is not None:
            retrying.close()
        progress.close()
        record.end()
        if record.keep and isinstance(tasks, Feed):
            write_outputs(record, options)


def _settled(
    batch: Batch, retrying: Optional[RetryFeed], record: Recording
) -> Iterable[tuple[Batch, bool]]:
    """``batch`` recorded, as parts in the call's positions, each with whether it is final
    (with retries, a failure that runs again is not)."""
    if retrying is not None:
        return retrying.settle(batch, record)
    record.add(batch)
    return ((batch, True),)


def open_recording(tasks: Sequence[Any], mode: str, options: Options, workers: int = 0) -> Recording:
    """The record of a call running ``tasks`` in ``mode`` with ``options``: it keeps every
    batch where tasks stay held (``map``), or where a trace or report is asked for."""
    wanted = options.trace is not None or options.report is not None
    held = not isinstance(tasks, Feed)
    return Recording(tasks, mode, settings_of(mode, options, workers), keep=held or wanted, labels=not held)


def write_outputs(record: Recording, options: Options) -> None:
    """Write the trace and the report ``options`` ask for, from ``record``; a file that
    cannot be written is logged, never raised (the call's outcomes matter more)."""
    if options.trace is None and options.report is None:
        return
    timeline = record.timeline()
    for path, module, writer in ((options.trace, "ezpool.trace", "write_trace"),
                                 (options.report, "ezpool.report", "write_report")):
        if path is None:
            continue
        try:
            getattr(importlib.import_module(module), writer)(timeline, path)
        except Exception as exc:
            logger.warning("could not write %s: %s", path, exc)
        else:
            logger.info("wrote %s (%d task runs on %d workers)", path, len(timeline), len(timeline.workers))


def open_sweep(options: Options, fun: Any) -> Optional[Sweep]:
    """The sweep of ``fun`` in ``options.store``, if one is asked for; stored failures
    are forgotten first when ``retry_failed`` is set."""
    if options.store is None:
        if options.retry_failed or options.store_key is not None:
            raise ValueError("retry_failed and store_key need a store: pass store='results.sqlite'")
        return None
    from ..store import open_sweep as open_store_sweep

    sweep = open_store_sweep(options.store, fun, options.store_key)
    if options.retry_failed:
        forgotten = sweep.forget_failed()
        logger.info("retry_failed: %d stored failures in %s will run again", forgotten, options.store)
    return sweep


def open_feed(tasks: Union[Iterable[Any], Live], limit: int, sweep: Optional[Sweep]) -> Feed:
    """A feed of ``tasks`` (any iterable, or a ``Live`` source) holding at most ``limit``,
    which knows the outcomes ``sweep`` has already; a ``TypeError`` for what is no
    iterable of tasks."""
    source = tasks if isinstance(tasks, Live) else iterate_tasks(tasks)
    lookup = sweep.lookup if sweep is not None and sweep.known() else None
    return Feed(source, limit, lookup)


def open_outcomes(
    backend: Callable[[], Backend],
    workers: Callable[[], int],
    fun: Callable[..., Any],
    tasks: Iterable[Any],
    options: Options,
    ordered: bool,
    stops: Optional[Stops] = None,
) -> Outcomes:
    """``imap`` (and ``aimap``): the outcomes of ``fun`` over ``tasks``, read lazily, on the
    backend ``backend()`` gives, which has ``workers()`` workers (for the default
    ``buffersize``). Bad tasks or options raise here, with nothing left open."""
    sweep = open_sweep(options, fun)
    try:
        limit = options.buffersize or default_buffer(workers())
        feed = open_feed(tasks, limit, sweep)
        runs_on = backend()
    except BaseException:
        if sweep is not None:
            sweep.close()
        raise
    batches = stream(runs_on, fun, feed, options, sweep, total_of(tasks), stops=stops)
    return outcomes(feed, batches, ordered, sweep)


def total_of(tasks: Iterable[Any]) -> Optional[int]:
    """How many tasks there are, where that is known without reading them."""
    return len(tasks) if isinstance(tasks, Sized) else None


def default_buffer(workers: int) -> int:
    """How many tasks ``imap`` may hold when ``buffersize`` is not given, for ``workers``
    workers: in proportion to them, and enough that tiny tasks still travel by the thousand."""
    return max(_BUFFER_LEAST, _BUFFER_PER_WORKER * workers)


class Outcomes(_Chain):
    """What ``imap`` returns: an iterator over the outcomes of a stream (see ``outcomes``).

    Its ``__next__`` is ``itertools.chain``'s: each batch's outcomes are made by ``map``
    and ``zip`` as they are asked for, so no Python frame runs for an outcome, only one
    a batch (in ``_handed``). ``close()``, or letting it go, stops the work.
    """

    __slots__ = ("_runs", "_current", "_sweep")

    _runs: Generator[Iterator[TaskOutcome], None, None]
    _current: list[Optional[Iterator[Any]]]  # the tasks of the run being handed out
    _sweep: Optional[Sweep]

    def close(self) -> None:
        """Stop the work (and close the store); no outcome comes after this."""
        try:
            self._runs.close()
        finally:
            if self._sweep is not None:  # closed already, unless nothing was asked for yet
                self._sweep.close()
        tasks, self._current[0] = self._current[0], None
        if tasks is not None:  # what is left of the run being handed out ends with it
            deque(tasks, maxlen=0)


def outcomes(
    feed: Feed, batches: Generator[Batch, None, None], ordered: bool, sweep: Optional[Sweep] = None
) -> Outcomes:
    """What ``imap`` gives: each outcome as it comes (``ordered``: in the order of the
    tasks), each task let go once handed on. Closing it stops the work, and closes
    ``sweep`` (if any) once the stream has ended."""
    current: list[Optional[Iterator[Any]]] = [None]
    runs = _handed(feed, batches, ordered, sweep, current)
    made = cast(Outcomes, Outcomes.from_iterable(runs))
    made._runs, made._current, made._sweep = runs, current, sweep
    return made


def _handed(
    feed: Feed, batches: Generator[Batch, None, None], ordered: bool, sweep: Optional[Sweep],
    current: list[Optional[Iterator[Any]]],
) -> Generator[Iterator[TaskOutcome], None, None]:
    """The outcomes of each batch, as one iterator a batch, in the order they are to be handed
    out; a batch's tasks are released once the next is asked for (all of its outcomes were
    handed on). ``current[0]`` is the iterator over the tasks of the run handed out last."""
    waiting: dict[int, tuple[int, Iterator[Any], Iterator[TaskOutcome]]] = {}
    following = 0  # with ordered=True, the position of the next outcome to hand out
    try:
        for batch in batches:
            start, count = batch.start, len(batch.values)
            tasks = iter(feed[start : start + count])
            run = _made(tasks, batch)
            if not ordered:
                current[0] = tasks
                yield run
                feed.release(start, start + count)
                continue
            # Batches cut the positions into runs, so the next run to hand out starts at `following`.
            waiting[start] = (count, tasks, run)
            while following in waiting:
                count, tasks, run = waiting.pop(following)
                current[0] = tasks
                yield run
                feed.release(following, following + count)
                following += count
    finally:
        try:
            batches.close()
        finally:
            if sweep is not None:
                sweep.close()


def _made(tasks: Iterator[Any], batch: Batch) -> Iterator[TaskOutcome]:
    """The outcomes of ``batch``, whose tasks ``tasks`` gives, made as they are asked for (in C:
    ``tuple.__new__`` skips ``TaskOutcome``'s keyword handling)."""
    failed = batch.failed
    flags: Iterator[bool] = map(failed.__contains__, range(len(batch.values))) if failed else repeat(False)
    rows = zip(tasks, batch.values, batch.elapsed, repeat(batch.worker), flags)
    return map(tuple.__new__, repeat(TaskOutcome), rows)


def placed(batch: Batch, where: list[int]) -> Generator[Batch, None, None]:
    """``batch`` (positions among the tasks run) cut into runs at their places in the call,
    where ``where[n]`` is the place of the ``n``-th task run."""
    offset = 0
    count = len(batch.values)
    while offset < count:
        end = offset + 1
        while end < count and where[batch.start + end] == where[batch.start + offset] + end - offset:
            end += 1
        failed = {spot - offset for spot in batch.failed if offset <= spot < end}
        part = Batch(where[batch.start + offset], batch.values[offset:end], batch.elapsed[offset:end],
                     failed, batch.worker)
        part.tries = batch.tries
        yield part
        offset = end
