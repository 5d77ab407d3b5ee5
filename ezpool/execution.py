"""Running a chunk of tasks inside a worker process, and packing what came of it."""

from __future__ import annotations

import logging
from array import array
from collections.abc import Sequence
from time import perf_counter
from typing import Any, Callable, Optional

from .serialization import ExceptionRecord, capture, dumps, safe_values

logger = logging.getLogger(__name__)

__all__ = ["ChunkOutcome", "run_chunk", "pack_chunk", "failed_chunk"]

ChunkOutcome = tuple[list[Any], "array[float]", dict[int, ExceptionRecord]]


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


def pack_chunk(first: int, outcome: ChunkOutcome) -> bytes:
    """Pickle a chunk's outcome; values that cannot be pickled become failures."""
    values, times, failures = outcome
    try:
        return dumps((first, values, times, failures))
    except Exception:
        safe_values(values, failures)
        return dumps((first, values, times, failures))


def failed_chunk(count: int, record: ExceptionRecord) -> ChunkOutcome:
    """The outcome of a chunk that could not run at all: every task fails alike."""
    return [None] * count, array("d", bytes(8 * count)), dict.fromkeys(range(count), record)
