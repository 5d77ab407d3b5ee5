"""Running a chunk of tasks inside a worker process, and packing what came of it."""

from __future__ import annotations

import logging
from array import array
from collections.abc import Sequence
from time import perf_counter
from typing import Any, Callable, Optional

from .output import Capture, TaskOutput
from .serialization import ExceptionRecord, capture, dumps, loads, safe_values

logger = logging.getLogger(__name__)

__all__ = [
    "ChunkOutcome",
    "ChunkReply",
    "run_chunk",
    "run_chunk_captured",
    "group_size",
    "GROUP_SECONDS",
    "pack_chunk",
    "unpack_chunk",
    "failed_chunk",
]

ChunkOutcome = tuple[list[Any], "array[float]", dict[int, ExceptionRecord]]

#: Tasks shorter than this are timed together, in groups that take about this long.
GROUP_SECONDS = 1e-4

#: Most tasks in one group, and how many times larger a group may be than the last.
_GROUP_MOST = 4096
_GROUP_GROWTH = 16

#: A decoded reply: first position, values, run times, failures, and what the
#: tasks wrote by offset (``None`` when output was not captured, or none was written).
ChunkReply = tuple[
    int, list[Any], "array[float]", dict[int, ExceptionRecord], Optional[dict[int, TaskOutput]]
]


def run_chunk(
    fun: Callable[..., Any],
    tasks: Sequence[Any],
    first: int,
    mark: Any,
    into: Optional[ChunkOutcome] = None,
    stop: Any = None,
) -> ChunkOutcome:
    """Run every task of a chunk; a failing task is recorded and the rest still run.

    ``mark[0]`` (a shared ``memoryview`` of 64-bit ints, or any list) is set to each
    task's position before it runs, and to -1 at the end, so that the parent can
    tell which task a dying or hung process was running.
    Returns the values (``None`` where a task failed), the run times, and the
    failures by offset within the chunk; ``into`` (three empty containers) receives
    them as they come, so that another thread can read what has finished. When
    ``stop.cancel`` becomes true the chunk ends after the running task, short.

    Run times are read in *groups* of consecutive tasks (see ``GROUP_SECONDS``):
    a task that takes ``GROUP_SECONDS`` or more is always timed alone, and tasks
    shorter than that share their group's time equally. Reading the clock costs
    about as much as a tiny task, so timing each of a million ``x*x`` alone would
    double what they cost. The times of a group are added when it ends, so
    ``into``'s times may trail its values by one group while the chunk runs.

    Any exception a task raises is its outcome, ``SystemExit`` and
    ``KeyboardInterrupt`` included: a task cannot end the process that runs it.
    """
    values, times, failures = into if into is not None else ([], array("d"), {})
    add_value, add_times, clock = values.append, times.extend, perf_counter
    count = len(tasks)
    low = 0  # offset of the group's first task
    size = 1  # the first task of a chunk is timed alone
    began = clock()
    while low < count:
        high = min(count, low + size)
        position = first + low
        for task in tasks[low:high]:
            mark[0] = position
            try:
                # The unpacking rule of ezpool.tasks.call, inlined: this is the hot loop.
                value = fun(*task) if type(task) is tuple else fun(task)
            except BaseException as exc:
                value = None
                failures[position - first] = capture(exc)
            add_value(value)
            position += 1
            if stop is not None and stop.cancel:
                break
        finished = clock()
        ran = position - first - low
        spent = finished - began
        add_times(array("d", (spent / ran,)) * ran if ran > 1 else (spent,))
        began = finished
        if stop is not None and stop.cancel:
            break
        low += ran
        size = group_size(spent, ran, size)
    mark[0] = -1
    return values, times, failures


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
    """``run_chunk``, keeping what each task prints and logs (see ``ezpool.output``).

    A separate loop, so that ``run_chunk`` pays nothing when output is not wanted.
    What a task wrote lands in ``outputs`` under its offset as it finishes (tasks
    that wrote nothing are left out); log records are kept from ``level`` up.
    """
    values, times, failures = into if into is not None else ([], array("d"), {})
    add_value, add_time, clock = values.append, times.append, perf_counter
    position = first
    with Capture(level) as kept:
        began = clock()
        for task in tasks:
            mark[0] = position
            kept.begin()
            try:
                value = fun(*task) if type(task) is tuple else fun(task)
            except BaseException as exc:
                value = None
                failures[position - first] = capture(exc)
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
    return values, times, failures


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


def unpack_chunk(reply: bytes | bytearray | memoryview) -> ChunkReply:
    """Unpickle what ``pack_chunk`` made (raises whatever unpickling raises)."""
    decoded = loads(reply)
    if len(decoded) == 4:
        first, values, times, failures = decoded
        return first, values, times, failures, None
    first, values, times, failures, outputs = decoded
    return first, values, times, failures, outputs


def failed_chunk(count: int, record: ExceptionRecord) -> ChunkOutcome:
    """The outcome of a chunk that could not run at all: every task fails alike."""
    return [None] * count, array("d", bytes(8 * count)), dict.fromkeys(range(count), record)
