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
    "pack_chunk",
    "unpack_chunk",
    "failed_chunk",
]

ChunkOutcome = tuple[list[Any], "array[float]", dict[int, ExceptionRecord]]

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

    Any exception a task raises is its outcome, ``SystemExit`` and
    ``KeyboardInterrupt`` included: a task cannot end the process that runs it.
    """
    values, times, failures = into if into is not None else ([], array("d"), {})
    add_value, add_time, clock = values.append, times.append, perf_counter
    position = first
    began = clock()
    for task in tasks:
        mark[0] = position
        try:
            # The unpacking rule of ezpool.tasks.call, inlined: this is the hot loop.
            value = fun(*task) if type(task) is tuple else fun(task)
        except BaseException as exc:
            value = None
            failures[position - first] = capture(exc)
        finished = clock()
        add_value(value)
        add_time(finished - began)
        began = finished
        position += 1
        if stop is not None and stop.cancel:
            break
    mark[0] = -1
    return values, times, failures


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


def unpack_chunk(reply: bytes) -> ChunkReply:
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
