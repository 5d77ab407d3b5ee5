"""The one warning at the end of a ``map`` call whose tasks failed, so that failures are never silent.

A failing task does not raise: its exception is its value, listed in ``results.errors``.
A call that had failures says so once, when it ends, on the ``ezpool.failures`` logger::

    28 of 30 tasks failed: NameError x28 (name 'fib' is not defined); see results.errors

grouped by the exceptions' types, the most frequent first, each with the message of its
first occurrence. EzPool sets no handler: with no logging configured, Python prints it on
standard error; ``logging.getLogger("ezpool.failures").setLevel(logging.ERROR)`` (or
``.disabled = True``) silences it. ``imap`` and the executor hand over each outcome as it
comes, and say nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import RemoteError
from .logs import get_logger
from .task_errors import SPREAD_NOTE

logger = get_logger(__name__)

__all__ = ["FAILURES_LOGGER", "warn_failures"]

#: The logger of the warning (a child of ``ezpool``).
FAILURES_LOGGER = "ezpool.failures"

#: Most exception types named; the others are counted.
_TYPES_SHOWN = 3

#: Longest message shown for a type, in characters.
_MESSAGE_LONGEST = 100


def warn_failures(results: Any, stored: Iterable[Any] = (), stops: Any = None) -> None:
    """Log the warning for a call's ``results`` if some of its tasks failed (nothing otherwise).

    ``stored``: the batches of outcomes read from a store (``Batch.failed`` counted, to say
    how many failed in an earlier run); ``stops``: the call's, when another thread may have
    stopped it all (a cancelled ``amap``), which then says nothing.
    """
    errors = results.errors
    if not errors or (stops is not None and stops.everything):
        return
    earlier = sum(len(batch.failed) for batch in stored)
    failures = get_logger(FAILURES_LOGGER)
    failures.warning("%s", summary(errors.values(), len(results), earlier))


def summary(errors: Iterable[BaseException], total: int, earlier: int = 0) -> str:
    """``"N of M tasks failed: Type xK (message), ...; see results.errors"`` for ``errors``."""
    kinds: dict[str, list[Any]] = {}  # type name -> [count, first exception], in order first seen
    count = 0
    for error in errors:
        count += 1
        name = _type_name(error)
        seen = kinds.get(name)
        if seen is None:
            kinds[name] = [1, error]
        else:
            seen[0] += 1
    ranked = sorted(kinds.items(), key=lambda kind: -kind[1][0])  # stable: ties in order first seen
    parts = []
    for name, (times, first) in ranked[:_TYPES_SHOWN]:
        message = _message(first)
        if _spread(first):
            message += "; the tuple tasks were spread into arguments: see its note"
        parts.append(f"{name} x{times}" + (f" ({message})" if message else ""))
    others = len(ranked) - _TYPES_SHOWN
    if others > 0:
        parts.append(f"and {others} more type{'' if others == 1 else 's'}")
    stored = f" ({earlier} of them read from the store)" if earlier else ""
    return f"{count} of {total} tasks failed{stored}: {', '.join(parts)}; see results.errors"


def _type_name(error: BaseException) -> str:
    """The exception's class name; for a ``RemoteError``, that of the class it stands for."""
    if isinstance(error, RemoteError) and error.type_name:
        return error.type_name.rpartition(".")[2]
    return type(error).__name__


def _message(error: BaseException) -> str:
    """The first line of the exception's message, cut to ``_MESSAGE_LONGEST`` characters."""
    try:
        text = error.message if isinstance(error, RemoteError) else str(error)
    except Exception:
        return ""
    lines = text.strip().splitlines()
    line = lines[0].strip() if lines else ""
    return line if len(line) <= _MESSAGE_LONGEST else line[: _MESSAGE_LONGEST - 3] + "..."


def _spread(error: BaseException) -> bool:
    """Whether ``error`` carries EzPool's note on a tuple task spread into arguments that did not
    fit (``ezpool._core.task_errors``): a PEP 678 note, or a line of the message before 3.11."""
    notes = getattr(error, "__notes__", None)
    lines = list(notes) if isinstance(notes, list) else []
    if isinstance(error, TypeError) and error.args and isinstance(error.args[0], str):
        lines += error.args[0].splitlines()[1:]
    return any(isinstance(line, str) and line.startswith(SPREAD_NOTE) for line in lines)
