"""A task's exception, made plainer where it is caught, for the user who reads it later.

Two things, both done only in the ``except`` branch of the loops that run tasks (a task
that returns pays nothing):

- a tuple task is spread into arguments (``fun(*task)``, see ``ezpool._core.tasks``); when
  that call itself fails with a ``TypeError`` (the arguments do not fit ``fun``, not a
  ``TypeError`` from inside its body), a note says so and how to pass the task whole:
  PEP 678's ``add_note`` from Python 3.11, a line added to the message before;
- the traceback starts at the user's frames: EzPool's own frames above the user's code
  (the loop that called ``fun``) are left out. One that holds no frame of the user's
  is kept whole where EzPool raised it, and dropped where the spread call itself
  failed (the note says why).
"""

from __future__ import annotations

from types import FrameType, TracebackType
from typing import Any, Callable, Optional, cast

from .logs import get_logger

logger = get_logger(__name__)

__all__ = ["SPREAD_NOTE", "caught", "user_frames", "spread_note"]

#: How the note on a spread task begins.
SPREAD_NOTE = "ezpool: the task "

#: The package whose frames are EzPool's own: ``ezpool``.
_PACKAGE = __name__.partition(".")[0]

#: Whether exceptions take PEP 678 notes (Python 3.11 on).
_NOTES = hasattr(BaseException, "add_note")


def caught(exc: BaseException, fun: Callable[..., Any], task: Any) -> BaseException:
    """``exc``, raised by ``fun`` run on ``task``, as its user should see it: with a note
    when ``task`` was spread into arguments that do not fit ``fun``, and its traceback from
    the user's frames on. Returns ``exc`` itself."""
    tb = exc.__traceback__
    if type(task) is tuple and isinstance(exc, TypeError) and _refused(exc, fun, task):
        _add_note(exc, spread_note(fun, task))
        if tb is not None and _own(user_frames(tb).tb_frame):
            exc.__traceback__ = None  # the call never entered fun: EzPool's frame alone says nothing
            return exc
    if tb is not None:
        exc.__traceback__ = user_frames(tb)
    return exc


def user_frames(tb: TracebackType) -> TracebackType:
    """``tb`` from its first frame that is not EzPool's own; all of it when every frame is."""
    first: Optional[TracebackType] = tb
    while first is not None and _own(first.tb_frame):
        first = first.tb_next
    return tb if first is None else first


def spread_note(fun: Callable[..., Any], task: tuple[Any, ...]) -> str:
    """What to tell the user whose tuple ``task`` did not fit ``fun`` once spread."""
    try:
        shown = repr(task)
    except Exception:
        shown = "(...)"
    if len(shown) > 60:
        shown = shown[:56] + "...)"
    count = len(task)
    return (
        f"{SPREAD_NOTE}{shown} is a tuple, so it was spread into {count} argument"
        f"{'' if count == 1 else 's'}; to pass it whole as one argument, wrap it as ({shown},), "
        f"or let {_name(fun)} take *args"
    )


def _worker_class(fun: Any) -> bool:
    """Whether ``fun`` is a ``BaseWorker`` class, whose ``run`` only the distributed mode calls
    (where ``fun`` is that ``run``): elsewhere the class itself is called, and the note misleads."""
    from ..worker import BaseWorker

    return isinstance(fun, type) and issubclass(fun, BaseWorker)


def _own(frame: FrameType) -> bool:
    name = frame.f_globals.get("__name__")
    return isinstance(name, str) and name.partition(".")[0] == _PACKAGE


def _refused(exc: TypeError, fun: Callable[..., Any], task: tuple[Any, ...]) -> bool:
    """Whether ``exc`` came from calling ``fun(*task)`` itself, the arguments not fitting.

    ``fun``'s signature says so where it can be read (it sees through ``partial``, bound
    methods and ``functools.wraps``); else (a builtin without one) the traceback does:
    no frame past EzPool's calling one means the call never entered ``fun``.
    """
    if _worker_class(fun):
        return False
    fits = _fits(fun, task)
    if fits is not None:
        return not fits
    tb: Optional[TracebackType] = exc.__traceback__
    while tb is not None:
        if not _own(tb.tb_frame):
            return False
        tb = tb.tb_next
    return True


def _fits(fun: Callable[..., Any], task: tuple[Any, ...]) -> Optional[bool]:
    """Whether ``fun``'s signature takes ``task``'s items as positional arguments; ``None``
    when it has no signature to read."""
    import inspect  # only once a tuple task failed with a TypeError

    try:
        signature = inspect.signature(fun)
    except Exception:
        return None
    try:
        signature.bind(*task)
    except TypeError:
        return False
    return True


def _name(fun: Callable[..., Any]) -> str:
    """``fun``'s name for the note (the function a ``partial`` wraps)."""
    while hasattr(fun, "func") and hasattr(fun, "args"):  # functools.partial
        fun = fun.func
    name = getattr(fun, "__qualname__", None)
    return name if isinstance(name, str) else "the function"


def _add_note(exc: BaseException, note: str) -> None:
    """PEP 678's note (Python 3.11+); before, the note ends the message, as ``str(exc)`` shows it."""
    if _NOTES:
        cast(Any, exc).add_note(note)
    elif len(exc.args) == 1 and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}\n{note}",)
    else:
        exc.args = (f"{exc}\n{note}",)
