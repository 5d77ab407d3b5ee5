"""What crosses a process boundary: functions, task chunks, values and exceptions.

Plain ``pickle`` is tried first because it is fast; ``cloudpickle`` takes over for
what pickle refuses (lambdas, closures, classes defined in ``__main__``). An
exception travels as an ``ExceptionRecord`` that keeps its type name, message and
formatted traceback, so even one that cannot be rebuilt loses nothing.
"""

from __future__ import annotations

import logging
import pickle
import traceback
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional

from .errors import RemoteError, RemoteTraceback, ResultNotSerializable

logger = logging.getLogger(__name__)

__all__ = [
    "ExceptionRecord",
    "dumps",
    "loads",
    "dumps_function",
    "dumps_tasks",
    "capture",
    "rebuild",
    "safe_values",
    "short_repr",
]

loads = pickle.loads


class ExceptionRecord(NamedTuple):
    """An exception as it travels: its pickle (if it had one) and its text."""

    blob: Optional[bytes]
    type_name: str
    message: str
    traceback_text: str


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``, falling back to cloudpickle for what plain pickle refuses."""
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle  # imported when first needed: ``import ezpool`` stays light

        return cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def dumps_function(fun: Any) -> bytes:
    """Pickle the function to run, or raise ``TypeError`` naming it."""
    import cloudpickle

    try:
        return cloudpickle.dumps(fun, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"cannot send {fun!r} to another process: {exc}") from exc


def dumps_tasks(tasks: Sequence[Any]) -> bytes:
    """Pickle a list of tasks, or raise ``TypeError`` naming the first task that fails."""
    try:
        return dumps(tasks)
    except Exception:
        for task in tasks:
            try:
                dumps(task)
            except Exception as exc:
                raise TypeError(f"cannot send task {task!r} to another process: {exc}") from exc
        raise


def capture(exc: BaseException) -> ExceptionRecord:
    """Record an exception raised here so that it can be rebuilt in another process."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob: Optional[bytes] = dumps(exc)
    except Exception:
        blob = None
    return ExceptionRecord(blob, _qualified_name(type(exc)), _safe_str(exc), text)


def rebuild(record: ExceptionRecord) -> BaseException:
    """Rebuild a recorded exception with the remote traceback as its ``__cause__``.

    An exception whose class cannot be rebuilt here arrives as ``RemoteError``.
    """
    exc: Optional[BaseException] = None
    if record.blob is not None:
        try:
            exc = loads(record.blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(record.type_name, record.message, record.traceback_text)
    exc.__cause__ = RemoteTraceback(record.traceback_text)
    return exc


def safe_values(values: list[Any], failures: dict[int, ExceptionRecord]) -> None:
    """Replace, in place, each value that cannot be pickled with a failure record."""
    for offset, value in enumerate(values):
        if offset in failures:
            continue
        try:
            dumps(value)
        except Exception as exc:
            values[offset] = None
            error = ResultNotSerializable(
                f"the task's value {short_repr(value)} cannot be sent back: {exc}"
            )
            failures[offset] = capture(error)


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module in ("builtins", "__main__") else f"{module}.{cls.__qualname__}"


def _safe_str(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception's own ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:
        return f"<str() of {type(exc).__name__} failed>"


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, or a stand-in when ``repr`` itself fails."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
