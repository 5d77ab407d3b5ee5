"""What names a sweep, and what tells whether stored outcomes came from the same function.

A sweep is named by the function's qualified name (``module.qualname``; for a
``functools.partial``, that of the function it wraps; for a method, of the method;
for a callable object, of its class). Its *identity* is two digests:

- the code: ``ezpool._core.shipping.fingerprint`` of the function (or class), i.e. its source
  text, or its bytecode when it has no source. Functions it calls are not part of it;
- the data: the SHA-256 of a pickle of what the function captures: its closure
  cells, its default arguments, a partial's arguments, a bound method's object, a
  callable object itself, and a class's plain attributes. Globals it reads are not
  part of it. Functions, classes and modules among those values count by name (and
  a function by its fingerprint too), so that moving code around a file changes
  nothing; sets are sorted first, because their order changes from run to run. A
  value whose pickle still varies from run to run (a set inside an object of your
  own) would read as changed every time. When the values cannot be pickled at all,
  the data digest is ``""`` and only the code is compared.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import io
import pickle
import types
from typing import Any, NamedTuple

import cloudpickle

from .._core.logs import get_logger
from .._core.shipping import fingerprint

logger = get_logger(__name__)

__all__ = ["Identity", "sweep_name", "identity"]


class Identity(NamedTuple):
    """The digests of a function's code and of the values it captures."""

    code: str
    data: str


def sweep_name(fun: Any) -> str:
    """``module.qualname`` of the function a sweep runs (see the module docstring)."""
    target = _target(fun)
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    return f"{module}.{qualname}"


def identity(fun: Any) -> Identity:
    """The code and data digests of ``fun``."""
    return Identity(fingerprint(_target(fun)), _data_digest(fun))


def _target(fun: Any) -> Any:
    """What names ``fun`` and holds its code: the wrapped function, the method, or the class."""
    while isinstance(fun, functools.partial):
        fun = fun.func
    if isinstance(fun, types.MethodType):
        return fun.__func__
    if isinstance(fun, (type, types.FunctionType, types.BuiltinFunctionType)):
        return fun
    return type(fun)  # a callable object: its class holds the code


def _captured(fun: Any) -> list[Any]:
    """The values ``fun`` computes with besides its tasks and its code."""
    values: list[Any] = []
    while isinstance(fun, functools.partial):
        values += [fun.args, sorted(fun.keywords.items())]
        fun = fun.func
    if isinstance(fun, types.MethodType):
        values.append(fun.__self__)
        fun = fun.__func__
    if isinstance(fun, types.FunctionType):
        cells = []
        for cell in fun.__closure__ or ():
            try:
                cells.append(cell.cell_contents)
            except ValueError:  # a cell not filled yet
                cells.append(None)
        values += [cells, fun.__defaults__, sorted((fun.__kwdefaults__ or {}).items())]
    elif isinstance(fun, type):
        values.append(sorted((name, value) for name, value in vars(fun).items() if _is_data(name, value)))
    elif not isinstance(fun, types.BuiltinFunctionType):
        values.append(fun)  # a callable object
    return values


def _is_data(name: str, value: Any) -> bool:
    if (name.startswith("__") and name.endswith("__")) or name == "_abc_impl":  # Python's own
        return False
    code = (staticmethod, classmethod, property, types.FunctionType)
    return not isinstance(value, code) and not inspect.isdatadescriptor(value)


def _data_digest(fun: Any) -> str:
    values = _canonical(_captured(fun))
    sink = _HashSink()
    try:
        _DigestPickler(sink, 4).dump(values)
    except Exception:
        sink = _HashSink()
        try:
            cloudpickle.CloudPickler(sink, 4).dump(values)
        except Exception as exc:
            logger.debug("what %r captures cannot be pickled (%s); only its code is compared", fun, exc)
            return ""
    return sink.digest.hexdigest()[:16]


def _canonical(value: Any, depth: int = 0) -> Any:
    """``value`` with every set in its lists, tuples and dicts sorted (by pickle)."""
    kind = type(value)
    if depth > 50:
        return value
    if kind is list or kind is tuple:
        return kind(_canonical(item, depth + 1) for item in value)
    if kind is dict:
        return {key: _canonical(item, depth + 1) for key, item in value.items()}
    if kind is set or kind is frozenset:
        members = [_canonical(item, depth + 1) for item in value]
        return (kind.__name__, sorted(members, key=_member_order))
    return value


def _member_order(member: Any) -> bytes:
    sink = io.BytesIO()
    try:
        _DigestPickler(sink, 4).dump(member)
    except Exception:
        return repr(member).encode()
    return sink.getvalue()


class _HashSink:
    """A file that hashes what is written to it, so that big values are never held twice."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)


class _DigestPickler(pickle.Pickler):
    """Pickles functions, classes and modules by name (functions with their fingerprint)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.FunctionType):
            return tuple, (("function", sweep_name(obj), fingerprint(obj)),)
        if isinstance(obj, type) and obj.__module__ != "builtins":
            return tuple, (("class", sweep_name(obj)),)
        if isinstance(obj, types.ModuleType):
            return tuple, (("module", obj.__name__),)
        return NotImplemented
