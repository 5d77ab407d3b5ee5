"""Running a chunk of tasks inside a worker process, and packing what came of it."""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from functools import partial
from itertools import starmap
from time import perf_counter
from typing import Any, Callable, Optional

from .._core.logs import get_logger
from .._core.records import ChunkOutcome, ExceptionRecord, GroupTimes, TaskOutput, group_mark
from .._core.serialization import dumps, record_exception, safe_values
from .._core.task_errors import caught

logger = get_logger(__name__)

__all__ = ["run_chunk", "run_chunk_captured", "group_size", "GROUP_SECONDS", "pack_chunk", "failed_chunk"]

#: Tasks shorter than this are timed together, in groups that take about this long.
GROUP_SECONDS = 1e-4

#: Most tasks in one group, and how many times larger a group may be than the last.
_GROUP_MOST = 4096
_GROUP_GROWTH = 16


def run_chunk(
    fun: Callable[..., Any],
    tasks: Sequence[Any],
    first: int,
    mark: Any,
    into: Optional[ChunkOutcome] = None,
    stop: Any = None,
    exact: bool = False,
) -> ChunkOutcome:
    """Run every task of a chunk; a failing task is recorded and the rest still run.

    ``mark[0]`` (a shared ``memoryview`` of 64-bit ints, or any list) says which
    tasks run now (see ``group_mark``), and is -1 at the end, so that the parent
    can tell what a dying or hung process was running: with ``exact`` it names
    each task before it runs; otherwise it names each *group* of tasks (below)
    as it starts, and a crash is narrowed down to its task by running that group
    again with ``exact`` (the parallel backend does). A timeout needs ``exact``.
    Returns the values (``None`` where a task failed), the run times (a
    ``GroupTimes``), and the failures by offset within the chunk; ``into`` (three
    empty containers, the times an ``array('d')`` or a ``GroupTimes``) receives
    them as they come, so that another thread can read what has finished. When
    ``stop.cancel`` becomes true the chunk ends short: after the running task
    with ``exact``, else after the running group.

    Run times are read in *groups* of consecutive tasks (see ``GROUP_SECONDS``):
    a task that takes ``GROUP_SECONDS`` or more is always timed alone, and tasks
    shorter than that share their group's time equally. Reading the clock costs
    about as much as a tiny task, so timing each of a million ``x*x`` alone would
    double what they cost; and a group runs as one ``map`` over its tasks, which
    costs half what a loop of Python statements a task does. The times of a group
    are added when it ends, so ``into``'s times may trail its values by one group
    while the chunk runs.

    Any exception a task raises is its outcome, ``SystemExit`` and
    ``KeyboardInterrupt`` included: a task cannot end the process that runs it.
    """
    values, times, failures = into if into is not None else ChunkOutcome([], GroupTimes(), {})
    clock = perf_counter
    add_group: Callable[[int, float], None]
    if isinstance(times, GroupTimes):
        add_group = times.add
    else:
        def add_group(ran: int, each: float, extend: Any = times.extend) -> None:
            extend(array("d", (each,)) * ran)
    spread = None if exact else _spreader(tasks)
    count = len(tasks)
    offset = -len(values)  # what to add to len(values) for a task's offset in the chunk
    low = 0  # offset of the group's first task
    size = 1  # the first task of a chunk is timed alone
    began = clock()
    if isinstance(times, GroupTimes) and times.origin is None:
        times.origin = began  # where the timeline places the chunk (ezpool.timeline)
    while low < count:
        high = min(count, low + size)
        if spread is None:
            ran = _run_marked(fun, tasks[low:high], first + low, mark, values, failures, offset, stop)
        else:
            ran = high - low
            mark[0] = group_mark(first + low, ran)
            _run_group(spread, fun, tasks[low:high], values, failures, offset)
        finished = clock()
        spent = finished - began
        add_group(ran, spent / ran)
        began = finished
        if stop is not None and stop.cancel:
            break
        low += ran
        size = group_size(spent, ran, size)
    mark[0] = -1
    return ChunkOutcome(values, times, failures)


def _spreader(tasks: Sequence[Any]) -> Optional[Callable[..., Iterator[Any]]]:
    """How a group of ``tasks`` runs as one call: ``map`` when none is a tuple, ``starmap``
    when all are (the rule of ``ezpool._core.tasks.call``); ``None``: task by task."""
    if type(tasks) is range:
        return map
    kinds = set(map(type, tasks))
    if tuple not in kinds:
        return map
    return starmap if len(kinds) == 1 else None


def _run_group(
    spread: Callable[..., Iterator[Any]],
    fun: Callable[..., Any],
    group: Sequence[Any],
    values: list[Any],
    failures: dict[int, ExceptionRecord],
    offset: int,
) -> None:
    """Run a group as one ``values.extend(map(fun, group))``. When a task raises, the
    values before it are in ``values`` already, and the rest of the group goes on."""
    remaining = iter(group)
    base = len(values)  # where the group's values begin
    while True:
        try:
            values.extend(spread(fun, remaining))
            return
        except BaseException as exc:
            task = group[len(values) - base]
            failures[len(values) + offset] = record_exception(caught(exc, fun, task))
            values.append(None)


def _run_marked(
    fun: Callable[..., Any],
    group: Sequence[Any],
    position: int,
    mark: Any,
    values: list[Any],
    failures: dict[int, ExceptionRecord],
    offset: int,
    stop: Any,
) -> int:
    """Run a group task by task, each marked as it starts; how many ran (fewer when
    ``stop.cancel`` came)."""
    add_value = values.append
    ran = 0
    for task in group:
        mark[0] = position + ran
        try:
            # The unpacking rule of ezpool._core.tasks.call, inlined: this is a hot loop.
            value = fun(*task) if type(task) is tuple else fun(task)
        except BaseException as exc:
            value = None
            failures[len(values) + offset] = record_exception(caught(exc, fun, task))
        add_value(value)
        ran += 1
        if stop is not None and stop.cancel:
            break
    return ran


def group_size(spent: float, ran: int, size: int) -> int:
    """How many tasks the next group holds, after ``ran`` tasks took ``spent`` seconds.

    As many as take about ``GROUP_SECONDS`` at the pace just measured, and at most
    ``_GROUP_GROWTH`` times the last size, so that a few quick tasks before a slow
    stretch cannot make one huge group; a single task again as soon as a group
    runs long.
    """
    if spent > 2 * GROUP_SECONDS:
        return 1
    most = min(_GROUP_MOST, size * _GROUP_GROWTH)
    if spent <= 0:
        return most
    return max(1, min(most, int(GROUP_SECONDS * ran / spent)))


def run_chunk_captured(
    fun: Callable[..., Any],
    tasks: Sequence[Any],
    first: int,
    mark: Any,
    level: int,
    outputs: dict[int, TaskOutput],
    into: Optional[ChunkOutcome] = None,
    stop: Any = None,
) -> ChunkOutcome:
    """``run_chunk``, keeping what each task prints and logs (see ``ezpool._core.relay``).

    A separate loop, so that ``run_chunk`` pays nothing when output is not wanted.
    What a task wrote lands in ``outputs`` under its offset as it finishes (tasks
    that wrote nothing are left out); log records are kept from ``level`` up.
    """
    values, times, failures = into if into is not None else ChunkOutcome([], GroupTimes(), {})
    add_value, clock = values.append, perf_counter
    add_time = partial(times.add, 1) if isinstance(times, GroupTimes) else times.append
    position = first
    from .output import Capture  # needs ``logging``: only a run that captures pays for it

    with Capture(level) as kept:
        began = clock()
        if isinstance(times, GroupTimes) and times.origin is None:
            times.origin = began
        for task in tasks:
            mark[0] = position
            kept.begin()
            try:
                value = fun(*task) if type(task) is tuple else fun(task)
            except BaseException as exc:
                value = None
                failures[position - first] = record_exception(caught(exc, fun, task))
            finished = clock()
            written = kept.end()
            if written is not None:
                outputs[position - first] = written
            add_value(value)
            add_time(finished - began)
            began = finished
            position += 1
            if stop is not None and stop.cancel:
                break
    mark[0] = -1
    return ChunkOutcome(values, times, failures)


def pack_chunk(first: int, outcome: ChunkOutcome, outputs: Optional[dict[int, TaskOutput]] = None) -> bytes:
    """Pickle a chunk's outcome; values that cannot be pickled become failures.

    The reply is ``(first, values, times, failures)``, with what the tasks wrote
    as a fifth element only when there is some.
    """
    values, times, failures = outcome
    extra = (outputs,) if outputs else ()
    try:
        return dumps((first, values, times, failures, *extra))
    except Exception:
        safe_values(values, failures)
        return dumps((first, values, times, failures, *extra))


def failed_chunk(count: int, record: ExceptionRecord) -> ChunkOutcome:
    """The outcome of a chunk that could not run at all: every task fails alike."""
    return ChunkOutcome([None] * count, array("d", bytes(8 * count)), dict.fromkeys(range(count), record))
