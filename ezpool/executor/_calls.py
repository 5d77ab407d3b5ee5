"""What runs where the pool runs tasks: an executor's task, and the code it carries.

A task is ``(fn, calls, how)``, run by ``run_task`` (by ``run_in_context`` when the
executor has a ``context``, which the pool passes first). A call's exception travels
as a ``Raised``, rebuilt by the caller with the worker's traceback as ``__cause__``.
A function that workers cannot import travels as a ``Code`` (cloudpickle, by value).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Union, cast

__all__ = [
    "run_task", "run_in_context", "Raised", "unwrap", "Code", "load_code", "describe", "failure",
    "call_failure",
]


def run_task(fn: Callable[..., Any], calls: Any, how: Union[bool, dict[str, Any], None]) -> Any:
    """Run one task where the pool runs tasks.

    A ``submit`` is one call, ``fn(*calls, **how)`` (``how`` is ``False`` when there
    are no keyword arguments): its value and ``None``, or ``None`` and its exception.
    A slice of a ``map`` is ``calls``, each a tuple of arguments (``how`` is ``None``)
    or the one argument (``how`` is ``True``, a map over one iterable): the values
    (``None`` where a call raised) and ``None`` or, by offset, each call's exception.
    Exceptions are wrapped so that they travel with their traceback.
    """
    if how is False or isinstance(how, dict):
        try:
            return (fn(*calls, **how) if how else fn(*calls)), None
        except BaseException as exc:  # a call cannot end the worker, nor the stream
            return None, Raised(exc)
    values: list[Any] = []
    errors: Optional[dict[int, Raised]] = None
    alone = how is True
    for call in calls:
        try:
            values.append(fn(call) if alone else fn(*call))
        except BaseException as exc:
            if errors is None:
                errors = {}
            errors[len(values)] = Raised(exc)
            values.append(None)
    return values, errors


def run_in_context(
    context: Any, fn: Callable[..., Any], calls: Any, how: Union[bool, dict[str, Any], None]
) -> Any:
    """``run_task`` for an executor with a ``context``: each call is ``fn(context, *args)``."""
    return run_task(functools.partial(fn, context), calls, how)


class Raised:
    """An exception a call raised: itself here, rebuilt with its remote traceback elsewhere.
    Its traceback starts at the caller's frames (``run_task``'s is left out)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        from .._core.task_errors import user_frames  # (made only where a call raised)

        tb = exc.__traceback__
        if tb is not None:
            exc.__traceback__ = user_frames(tb)
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        from .._core.serialization import rebuild, record_exception

        return (rebuild, (record_exception(self.exc),))


def describe(task: Any) -> str:
    """A task in words, for the timeline: ``fn(args)`` for a submit, ``fn x N calls`` for
    a slice of a map."""
    from .._core.recording import cut

    fn, calls, how = task
    name = fn.name if type(fn) is Code else getattr(fn, "__qualname__", None) or type(fn).__name__
    if how is False or isinstance(how, dict):
        return cut(f"{name}{tuple(calls)!r}")
    return f"{name} x {len(calls)} calls"


def failure(value: Any) -> Optional[BaseException]:
    """The exception a task's call raised (the first, for a slice of a map), from its value."""
    if type(value) is not tuple or len(value) != 2 or value[1] is None:
        return None
    errors = value[1]
    if isinstance(errors, dict):
        errors = next(iter(errors.values()), None)
    return unwrap(errors) if type(errors) is Raised or isinstance(errors, BaseException) else None


def call_failure(value: Any) -> Optional[BaseException]:
    """The exception of a ``submit``'s call that raised, from its task's value (what
    ``retries`` look for); ``None`` for a value, and for a slice of a ``map``, whose calls
    that did not raise must not run again."""
    if type(value) is not tuple or len(value) != 2 or value[0] is not None:
        return None
    error = value[1]
    return unwrap(error) if type(error) is Raised or isinstance(error, BaseException) else None


def unwrap(error: Any) -> BaseException:
    return cast(BaseException, error.exc if type(error) is Raised else error)


class Code:
    """A function sent by value (cloudpickle) for workers that cannot import it, e.g. one
    from ``__main__``. The same instance in many tasks is pickled once per chunk, and
    loaded once per worker process (``load_code`` caches it by content id)."""

    __slots__ = ("fid", "blob", "name")

    def __init__(self, fn: Callable[..., Any]) -> None:
        from .._core.shipping import ship  # (cloudpickle: imported when first needed)

        self.name = str(getattr(fn, "__qualname__", None) or type(fn).__name__)
        shipment = ship(fn)
        self.fid, self.blob = shipment.fid, shipment.blob

    def __reduce__(self) -> tuple[Any, ...]:
        return (load_code, (self.fid, self.blob))


@functools.lru_cache(maxsize=64)
def load_code(fid: str, blob: bytes) -> Callable[..., Any]:
    from .._core.shipping import unpack

    return cast(Callable[..., Any], unpack(blob))
