"""Tasks that cannot be sent to a worker process: each one is its own outcome.

A piece of tasks is pickled whole, as it always is, and nothing more is paid
while that works. Only when it fails are its tasks pickled one by one: each that
fails ends as a ``TaskNotSerializable`` (a settled batch, which the backend
reports like any other, never run), and each run of good tasks between them is
pickled again as a piece of its own::

    tasks 40..59 ── pickled whole ─▶ one piece                  (the usual case)
                 └─ it fails ─▶ 40..46 ─▶ a piece
                                47     ─▶ Batch(47, [TaskNotSerializable])
                                48..59 ─▶ a piece

A task may also pickle here but not unpickle where it runs (its class is in the caller's
``__main__`` only, under ``if __name__ == "__main__":``). The worker then answers every
task of the chunk with ``not_loaded``; the caller runs them again one by one (the ledger's
``Garbled`` path), and the one that fails alone ends as ``TaskNotSerializable``, named
(``rebuild_answer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from ..errors import TaskNotSerializable
from .logs import get_logger
from .records import Batch, ChunkReply
from .serialization import Pickled, dumps, dumps_parts, rebuild, short_repr

logger = get_logger(__name__)

__all__ = ["ADVICE", "not_loaded", "not_sendable", "pickle_piece", "rebuild_answer"]

#: What a task that cannot be pickled should be turned into, in the error's words.
ADVICE = (
    "Make it picklable, or pass something that is (a path, an index, the arguments "
    "to build it) and build the object inside the function"
)


def not_sendable(task: Any, error: BaseException) -> TaskNotSerializable:
    """The outcome of ``task``, which could not be pickled (``error`` says why), naming
    the part of it that cannot be (an executor's call holds its arguments in a tuple)."""
    part = _culprit(task)
    what = "it" if part is task else f"{short_repr(part)} in it"
    return TaskNotSerializable(
        f"task {short_repr(task)} cannot be sent to a worker process: {what} cannot be pickled "
        f"({type(error).__name__}: {error}). {ADVICE}."
    )


def _culprit(task: Any, depth: int = 4) -> Any:
    """The innermost item of ``task`` (through tuples, lists and dicts' values) that cannot
    be pickled, or ``task`` itself."""
    if depth and type(task) in (tuple, list, dict):
        for item in task.values() if isinstance(task, dict) else task:
            try:
                dumps(item)
            except Exception:
                return _culprit(item, depth - 1)
    return task


def pickle_piece(tasks: Sequence[Any], start: int) -> tuple[list[tuple[int, int, Pickled]], list[Batch]]:
    """``tasks`` (positions ``start ..``) pickled as pieces ``(start, stop, pickle)``, and
    a failure batch for each task that cannot be pickled (see the module's text).

    Raises what pickling raised when every task pickles alone but not all of them together.
    """
    try:
        return [(start, start + len(tasks), dumps_parts(tasks))], []
    except Exception as whole:
        failure = whole
    pieces: list[tuple[int, int, Pickled]] = []
    failed: list[Batch] = []
    good = 0  # the first task of the run of good ones not pickled yet
    for offset, task in enumerate(tasks):
        try:
            dumps(task)
        except Exception as exc:
            if good < offset:
                pieces.append((start + good, start + offset, dumps_parts(tasks[good:offset])))
            good = offset + 1
            error = not_sendable(task, exc)
            error.__cause__ = exc
            failed.append(Batch(start + offset, [error], [0.0], {0}, "not sent"))
    if not failed:
        raise failure
    if good < len(tasks):
        pieces.append((start + good, start + len(tasks), dumps_parts(tasks[good:])))
    logger.debug("tasks %d..%d: %d cannot be pickled", start, start + len(tasks) - 1, len(failed))
    return pieces, failed


def not_loaded(error: BaseException) -> TaskNotSerializable:
    """What a worker answers for every task of a chunk it cannot unpickle (``error``): the
    caller has them run again one by one, and names the one that fails (``rebuild_answer``)."""
    return TaskNotSerializable(f"{type(error).__name__}: {error}")


def rebuild_answer(answer: ChunkReply, tasks: Sequence[Any], worker: str) -> Optional[TaskNotSerializable]:
    """Rebuild, in place, the exceptions of an answer from ``worker``; and say whether it
    could not unpickle the chunk's tasks (each value is the ``not_loaded`` error): for
    several tasks, that error (they run again one by one, at no cost, as the ledger does
    for a ``Garbled`` answer); for one task, ``None``, and its value now names it."""
    values, failed = answer.values, answer.failures
    for offset, record in failed.items():
        values[offset] = rebuild(record)
    if not values or len(failed) != len(values) or not isinstance(values[0], TaskNotSerializable):
        return None
    if len(values) > 1:
        return values[0]
    task = tasks[answer.first]
    values[0] = TaskNotSerializable(
        f"task {short_repr(task)} cannot be unpickled where it runs ({worker}): {values[0]}. Define "
        "its class at the top level of a module the workers import (not under if __name__ == "
        '"__main__":), or pass something they can build it from (a path, an index)'
    )
    return None
