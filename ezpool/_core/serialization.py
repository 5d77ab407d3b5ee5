"""What crosses a process boundary: functions, task chunks, values and exceptions.

Plain ``pickle`` is tried first because it is fast; ``cloudpickle`` takes over for
what pickle refuses (lambdas, closures, classes defined in ``__main__``). A function
to run goes through cloudpickle, except a plain function that both would send by
name, or one of the main script that the worker processes hold as well (forked
after it was defined, or defined again where they run the script): then neither
side imports cloudpickle, a good part of a cold start. An
exception travels as an ``ExceptionRecord`` that keeps its type name, message and
formatted traceback, so even one that cannot be rebuilt loses nothing.

Tasks travel as ``Pickled`` parts: their pickle cut where a large ``bytes`` object
sits in it, which stays a part of its own, the task's very object rather than a
copy. Joined, the parts are the pickle; a process that sends them writes each
into the pipe, so a 5 MB argument is never copied in the calling process, and
the tasks are held once however many of them wait to be sent.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import types
import zlib
from collections.abc import Sequence
from typing import Any, Optional

from ..errors import RemoteError, RemoteTraceback, ResultNotSerializable
from .logs import get_logger
from .records import ExceptionRecord
from .task_errors import user_frames

logger = get_logger(__name__)

__all__ = [
    "ExceptionRecord",
    "dumps",
    "loads",
    "dumps_function",
    "pickle_by_name",
    "dumps_tasks",
    "loads_tasks",
    "Pickled",
    "dumps_parts",
    "pickled_size",
    "record_exception",
    "rebuild",
    "safe_values",
    "short_repr",
]

loads = pickle.loads


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``, falling back to cloudpickle for what plain pickle refuses."""
    try:
        return pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    except Exception:
        import cloudpickle  # imported when first needed: ``import ezpool`` stays light

        return cloudpickle.dumps(obj, pickle.HIGHEST_PROTOCOL)


def dumps_function(fun: Any) -> bytes:
    """Pickle the function to run, or raise ``TypeError`` naming it."""
    blob = pickle_by_name(fun)
    if blob is not None:
        return blob
    import cloudpickle

    try:
        return cloudpickle.dumps(fun, pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"cannot send {fun!r} to another process: {exc}") from exc


def pickle_by_name(fun: Any, main: Optional[str] = None) -> Optional[bytes]:
    """``fun`` pickled by plain pickle, when that is what cloudpickle would send too:
    a function found by its module's name and ``__qualname__``, in a module that can
    be imported; else ``None``.

    A function of ``__main__`` travels by value (``None`` here) unless ``main`` says
    how the receiving processes hold the caller's ``__main__``: ``"fork"``, they are
    copies of this process made after now, so the name finds the same function;
    ``"import"``, they run the main script again (``spawn``, ``forkserver``), and a
    function the script defines the same way whatever its ``__name__`` travels by
    name (see ``_defined_again``).

    Once cloudpickle is imported (a module may have been registered with it to travel
    by value), this always answers ``None``, and cloudpickle decides.
    """
    if "cloudpickle" in sys.modules:
        return None
    if isinstance(fun, types.BuiltinFunctionType):
        if not isinstance(fun.__self__, types.ModuleType):  # a method of some object
            return None
    elif not isinstance(fun, types.FunctionType):
        return None
    module = sys.modules.get(getattr(fun, "__module__", None) or "__main__")
    if module is not None and module.__name__ == "__main__" and main is not None:
        if main == "import":
            return _by_name_again(fun, module)
    elif module is None or module.__name__ == "__main__" or getattr(module, "__spec__", None) is None:
        return None
    try:
        return pickle.dumps(fun, pickle.HIGHEST_PROTOCOL)  # fails unless the name finds fun itself
    except Exception:
        return None


def _by_name_again(fun: Any, main: types.ModuleType) -> Optional[bytes]:
    """A function of the main script, pickled for processes that run the script again:
    a reference that finds it there by name, or ``None`` unless ``_defined_again``."""
    modules = _defined_again(fun, main)
    if modules is None:
        return None
    try:
        return pickle.dumps(_FromMain(fun, modules), pickle.HIGHEST_PROTOCOL)
    except Exception:
        return None


def _defined_again(fun: Any, main: types.ModuleType) -> Optional[dict[str, str]]:
    """Whether a process that runs the main script again defines ``fun`` as it is here:
    a plain function whose ``def`` is a statement at the top of the script (so it runs
    whatever ``__name__`` is), found under its name, with no attributes of its own, and
    using no global of ``__main__`` but modules (those the script may import only under
    ``if __name__ == "__main__":`` are imported there by name, as cloudpickle would).
    The answer: those modules, by the name the function uses; ``None``: not so.
    """
    path = getattr(main, "__file__", None)
    if not isinstance(fun, types.FunctionType) or fun.__dict__ or fun.__closure__ or path is None:
        return None
    code, named, spec = fun.__code__, main.__dict__.get(fun.__qualname__), getattr(main, "__spec__", None)
    if spec is not None or fun.__globals__ is not main.__dict__ or named is not fun:
        return None  # run with -m (its process may skip the script), or not found by name
    if os.path.abspath(code.co_filename) != os.path.abspath(path):
        return None
    import linecache  # with tokenize, ~1 ms a fresh interpreter spends only here

    if not linecache.getline(code.co_filename, code.co_firstlineno).startswith("def "):
        return None  # indented (under an if, in a class), or decorated
    modules = {}
    for name in _global_names(code):
        value = main.__dict__.get(name, fun)
        if isinstance(value, types.ModuleType):
            modules[name] = value.__name__
        elif value is not fun:  # the function itself, or a builtin
            return None
    return modules


def _global_names(code: types.CodeType) -> set[str]:
    """The names ``code`` (and the code nested in it) may read as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


class _FromMain:
    """Pickles as a reference to a function of the main script, checked where it loads."""

    def __init__(self, fun: types.FunctionType, modules: dict[str, str]) -> None:
        self.name, self.modules, self.check = fun.__qualname__, modules, _checksum(fun.__code__)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _from_main, (self.name, self.modules, self.check)


def _checksum(code: types.CodeType) -> int:
    """A checksum of a function's own code: its bytecode, constants and names."""
    consts = tuple(const for const in code.co_consts if not isinstance(const, types.CodeType))
    return zlib.crc32(code.co_code + repr((consts, code.co_names)).encode())


def _from_main(name: str, modules: dict[str, str], check: int) -> Any:
    """In a process that ran the main script again: its function ``name``, with the
    modules it uses as globals imported where the script did not import them."""
    main = sys.modules["__main__"]
    fun = getattr(main, name, None)
    if not isinstance(fun, types.FunctionType) or _checksum(fun.__code__) != check:
        raise RuntimeError(
            f"{name} of {getattr(main, '__file__', '__main__')} is not the function the caller runs "
            "(was the script changed since it started?)"
        )
    for used, module in modules.items():
        if used not in fun.__globals__:
            fun.__globals__[used] = importlib.import_module(module)
    return fun


#: A pickle in parts (see the module's docstring): joined, they are the pickle.
Pickled = tuple[bytes, ...]

#: A ``bytes`` object the pickler writes out that is at least this large is a part
#: of its own, kept as it is; smaller writes are joined. Pickle writes a buffer of
#: 64 KiB or more to its file directly, by reference, and its frames are below 128 KiB.
_OWN_PART = 1 << 16


class _Parts:
    """A file for a pickler that keeps what is written as ``Pickled`` parts."""

    __slots__ = ("parts", "_small")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self._small: list[bytes] = []

    def write(self, data: Any) -> int:
        if type(data) is bytes and len(data) >= _OWN_PART:  # immutable: safe to keep
            self._join()
            self.parts.append(data)
        else:
            self._small.append(bytes(data))  # a copy only of what may change (a view)
        return len(data)

    def _join(self) -> None:
        if self._small:
            self.parts.append(b"".join(self._small))  # one part is kept, not copied
            self._small = []

    def done(self) -> Pickled:
        self._join()
        return tuple(self.parts)


def dumps_parts(obj: Any) -> Pickled:
    """``dumps``, in parts (see the module's docstring)."""
    sink = _Parts()
    try:
        pickle.Pickler(sink, pickle.HIGHEST_PROTOCOL).dump(obj)
    except Exception:
        import cloudpickle

        sink = _Parts()
        cloudpickle.CloudPickler(sink, pickle.HIGHEST_PROTOCOL).dump(obj)
    return sink.done()


def pickled_size(pickled: Pickled) -> int:
    """How many bytes the parts hold in all."""
    return sum(map(len, pickled))


def dumps_tasks(tasks: Sequence[Any]) -> Pickled:
    """Pickle a list of tasks in parts, or raise ``TypeError`` naming the first task that fails."""
    try:
        return dumps_parts(tasks)
    except Exception:
        for task in tasks:
            try:
                dumps(task)
            except Exception as exc:
                raise TypeError(f"cannot send task {task!r} to another process: {exc}") from exc
        raise


def loads_tasks(pieces: Sequence[Any]) -> Sequence[Any]:
    """The tasks of a chunk from the pickles of its pieces (each what ``dumps_tasks``
    made). One piece stays as it comes: a range of tasks is run as a range."""
    if len(pieces) == 1:
        return loads(pieces[0])
    return [task for piece in pieces for task in loads(piece)]


def record_exception(exc: BaseException) -> ExceptionRecord:
    """Record an exception raised here so that it can be rebuilt in another process.

    Its traceback text starts at the first frame that is not EzPool's own (the user's
    function, below the loop that called it), or holds every frame when none is the user's.
    """
    import traceback  # ~2.5 ms to import: a run pays for it only once a task fails

    tb = exc.__traceback__
    text = "".join(traceback.format_exception(type(exc), exc, None if tb is None else user_frames(tb)))
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
            failures[offset] = record_exception(error)


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
