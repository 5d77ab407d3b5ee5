"""Rows whose tasks are a ``range``, matched against a range of tasks by arithmetic, never task by task.

A ``map`` over ``range(n)`` records each batch's tasks as a ``range`` slice (the pickle
of three numbers). Looking such rows up for a range of tasks needs no task key: the
positions of the tasks a row holds are one run, found from the two ranges' starts,
steps and lengths, and the run of a later row is painted over those of earlier rows
(a later outcome wins)::

    tasks looked up    range(0, 10)          positions 0 1 2 3 4 5 6 7 8 9
    row 1 (entries 0..5)  range(0, 6)                  0 1 2 3 4 5
    row 2 (entries 6..9)  range(4, 8)                          6 7 8 9
    segments              (0, 4, entry 0), (4, 8, entry 6)

A *segment* is a run of positions whose entries (see ``index``) follow one another in
one row. Ranges of different steps share values a least common multiple apart (found
by the Chinese remainder theorem): each is a segment of one position (a ``retry_failed``
run stores its few failed tasks so, as a range of a large step). A row that would give
more than ``MOST_SINGLES`` of those is not matched here (``None``): the index then keys
every task.

A list of tasks equal to a range, item by item (``[0, 1, 2]``, or ``[0, True, 2.0]``: equal
numbers share a key), is matched as that range (``as_range``): a ``map`` over a list of
numbers, or a row an older ezpool stored as a list.
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Iterable, Sequence
from operator import eq
from typing import Any, NamedTuple, Optional

from .._core.logs import get_logger

logger = get_logger(__name__)

__all__ = ["Segment", "segments", "as_range"]

#: The most one-position segments a row of another step may give (else keys are used).
MOST_SINGLES = 4096


class Segment(NamedTuple):
    """Positions ``start .. stop - 1`` of the tasks looked up: entries ``entry`` on, one by one."""

    start: int
    stop: int
    entry: int


def segments(tasks: range, rows: Iterable[tuple[int, range]]) -> Optional[list[Segment]]:
    """Where the tasks of ``tasks`` are among ``rows`` (``(first entry, tasks)`` of each row, oldest
    first), as segments in position order; ``None`` when a row cannot be matched by arithmetic."""
    painted: list[Segment] = []
    for first, stored in rows:
        run = _overlap(tasks, stored)
        if run is None:
            singles = _common(tasks, stored)
            if singles is None:
                return None
            for value in singles:
                position = tasks.index(value)
                _paint(painted, Segment(position, position + 1, first + stored.index(value)))
            continue
        start, stop, offset = run
        if start < stop:
            _paint(painted, Segment(start, stop, first + offset))
    return painted


def _common(tasks: range, stored: range) -> Optional[range]:
    """The values two ranges of different steps share, ascending; ``None`` when they are too many."""
    low = max(min(tasks[0], tasks[-1]), min(stored[0], stored[-1]))
    high = min(max(tasks[0], tasks[-1]), max(stored[0], stored[-1]))
    one, two = abs(stored.step), abs(tasks.step)
    shared = math.gcd(one, two)
    if low > high or (tasks.start - stored.start) % shared:
        return range(0)
    # value = stored.start + one * k, with one * k = tasks.start - stored.start (mod two)
    k = (tasks.start - stored.start) // shared * pow(one // shared, -1, two // shared) % (two // shared)
    lcm = one // shared * two
    found = range(low + (stored.start + one * k - low) % lcm, high + 1, lcm)
    return found if len(found) <= MOST_SINGLES else None


def as_range(tasks: Sequence[Any]) -> Optional[range]:
    """``tasks`` as a range, when it is one or a list equal to one item by item; else ``None``."""
    if type(tasks) is range:
        return tasks
    if type(tasks) is not list or not tasks:
        return None
    first, last, count = tasks[0], tasks[-1], len(tasks)
    if not isinstance(first, numbers.Integral) or not isinstance(last, numbers.Integral):
        return None
    try:
        start = int(first)
        step = int(tasks[1]) - start if count > 1 and isinstance(tasks[1], numbers.Integral) else 1
    except (TypeError, ValueError):
        return None
    if step == 0 or int(last) != start + (count - 1) * step:
        return None
    candidate = range(start, start + count * step, step)
    return candidate if all(map(eq, tasks, candidate)) else None


def _overlap(tasks: range, stored: range) -> Optional[tuple[int, int, int]]:
    """The positions ``start .. stop - 1`` of ``tasks`` that ``stored`` holds, and the offset in
    ``stored`` of the first; ``None`` when their steps differ and their values meet."""
    if not tasks or not stored:
        return 0, 0, 0
    if len(stored) == 1:
        value = stored[0]
        return (tasks.index(value), tasks.index(value) + 1, 0) if value in tasks else (0, 0, 0)
    if len(tasks) == 1:
        value = tasks[0]
        return (0, 1, stored.index(value)) if value in stored else (0, 0, 0)
    if tasks.step != stored.step:
        low, high = min(tasks[0], tasks[-1]), max(tasks[0], tasks[-1])
        if max(stored[0], stored[-1]) < low or min(stored[0], stored[-1]) > high:
            return 0, 0, 0
        return None
    shift, remainder = divmod(tasks.start - stored.start, tasks.step)
    if remainder:
        return 0, 0, 0
    # Position p of tasks is offset shift + p of stored.
    start = max(0, -shift)
    stop = min(len(tasks), len(stored) - shift)
    return (start, stop, shift + start) if start < stop else (0, 0, 0)


def _paint(painted: list[Segment], new: Segment) -> None:
    """Put ``new`` into the sorted, disjoint ``painted``, over whatever it covers."""
    at = bisect.bisect_left(painted, Segment(new.start, new.start, -1))  # the first at new.start or after
    if at and painted[at - 1].stop > new.start:
        at -= 1
    end = at
    while end < len(painted) and painted[end].start < new.stop:
        end += 1
    kept = [new]
    if at < end:
        head, tail = painted[at], painted[end - 1]
        if head.start < new.start:
            kept.insert(0, Segment(head.start, new.start, head.entry))
        if tail.stop > new.stop:
            kept.append(Segment(new.stop, tail.stop, tail.entry + new.stop - tail.start))
    painted[at:end] = kept
