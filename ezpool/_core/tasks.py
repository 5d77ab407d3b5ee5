"""Task normalisation: what counts as a task, its order, and how it becomes arguments.

A task is any hashable object, because tasks are the keys of the result dict. A task
that is exactly a ``tuple`` is unpacked into positional arguments (``fun(*task)``);
anything else, strings and named tuples included, is passed as the one argument.
With a ``context`` (an option), it comes first: ``fun(context, *task)``.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any, Callable

from .logs import get_logger

logger = get_logger(__name__)

__all__ = ["unique_tasks", "iterate_tasks", "call", "bind"]


def unique_tasks(tasks: Iterable[Hashable]) -> Sequence[Hashable]:
    """Return the distinct tasks in the order they were first given.

    A ``range`` is returned as it is: it is distinct already, and a slice of it
    travels to a worker as three numbers instead of a list.

    Raises ``TypeError`` naming the task when one is unhashable, or when ``tasks``
    is not an iterable of tasks, before any task runs.
    """
    items = tasks if isinstance(tasks, (list, tuple, range)) else list(iterate_tasks(tasks))
    if isinstance(items, range):
        return items
    try:
        if len(set(items)) == len(items):
            return list(items)  # already distinct; a set is the fastest way to know
        return list(dict.fromkeys(items))
    except TypeError:
        for task in items:
            try:
                hash(task)
            except TypeError as exc:
                raise TypeError(_unhashable(task, exc)) from None
        raise


def _unhashable(task: Any, error: TypeError) -> str:
    """Why ``task`` cannot be a task, and the fix, with the tuple rule a fix must respect."""
    said = f"task {task!r} is unhashable ({error}); tasks are the keys of the results"
    if isinstance(task, list):
        try:
            hash(as_tuple := tuple(task))
        except TypeError:
            pass
        else:
            return (
                f"{said}. A tuple is hashable, but a tuple task is spread into arguments "
                f"(fun(*task)): to pass {as_tuple!r} as one argument, wrap it as ({as_tuple!r},)"
            )
    return (
        f"{said}, so use hashable ones (a tuple for a list, a frozenset for a set). A tuple "
        "task is spread into arguments (fun(*task)): wrap it as (t,) to pass one tuple t"
    )


def iterate_tasks(tasks: Any) -> Iterator[Any]:
    """An iterator over ``tasks``, or a ``TypeError`` saying what was given instead."""
    if tasks is None or isinstance(tasks, (str, bytes)):
        raise TypeError(
            f"tasks must be an iterable of tasks, got {tasks!r}; "
            "wrap a single task in a list, e.g. tasks=[task]"
        )
    try:
        return iter(tasks)
    except TypeError:
        raise TypeError(f"tasks must be an iterable of tasks, got {type(tasks).__name__} {tasks!r}") from None


def call(fun: Callable[..., Any], task: Any) -> Any:
    """Run one task: unpack an exact tuple into arguments, pass anything else whole."""
    return fun(*task) if type(task) is tuple else fun(task)


def bind(fun: Callable[..., Any], context: Any) -> Callable[..., Any]:
    """``fun`` with ``context`` as its first argument (``fun`` itself when ``context`` is ``None``)."""
    return fun if context is None else functools.partial(fun, context)
