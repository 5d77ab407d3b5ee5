"""The code a client sends to generic workers: its bytes, its id, its fingerprint, its source.

A function (or ``BaseWorker`` subclass) travels as one cloudpickle: by reference
when the worker can import its module, by value otherwise (``__main__``, a notebook
cell, a lambda) or when its module is listed in ``ship_modules``. The pickle's
SHA-256 is its id, so a worker that has it already is sent nothing. Code that has
no file (a notebook cell) carries its source lines, so a traceback from the worker
still shows them. A *fingerprint* of source or bytecode tells a worker that serves
one named class whether it runs the same code as the client.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import linecache
import logging
import os
import pickle
import types
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, Union

import cloudpickle

logger = logging.getLogger(__name__)

__all__ = ["Shipment", "ship", "unpack", "fingerprint"]

ModuleLike = Union[str, types.ModuleType]


class Shipment(NamedTuple):
    """A function ready to travel: its content id and its pickle."""

    fid: str
    blob: bytes


def ship(fun: Any, by_value: Sequence[ModuleLike] = ()) -> Shipment:
    """Pickle ``fun`` (with the source lines of file-less code) for a generic worker.

    Raises ``TypeError`` naming ``fun`` when it cannot be pickled.
    """
    modules = [importlib.import_module(m) if isinstance(m, str) else m for m in by_value]
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        blob = cloudpickle.dumps((fun, _sources(fun)), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise TypeError(f"cannot send {fun!r} to a worker: {exc}") from exc
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)
    return Shipment(hashlib.sha256(blob).hexdigest()[:32], blob)


def unpack(blob: bytes) -> Any:
    """The function in a shipment; its source lines go into ``linecache`` for tracebacks."""
    fun, sources = pickle.loads(blob)
    for filename, lines in sources.items():
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return fun


def fingerprint(target: Any) -> str:
    """A short digest of the code of a function or class: equal for equal code."""
    digest = hashlib.sha256()
    for part in _code_parts(target):
        digest.update(part)
    return digest.hexdigest()[:16]


def _code_parts(target: Any) -> Iterator[bytes]:
    if isinstance(target, type):
        yield target.__qualname__.encode()
        for name, value in sorted(vars(target).items()):
            function = getattr(value, "__func__", value)
            if inspect.isfunction(function):
                yield name.encode()
                yield from _code_parts(function)
        return
    try:
        yield inspect.getsource(target).encode()
    except (OSError, TypeError):
        code = getattr(target, "__code__", None)
        if code is not None:
            yield from _bytecode(code)


def _bytecode(code: types.CodeType) -> Iterator[bytes]:
    yield code.co_code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _bytecode(const)
        else:
            yield repr(const).encode()


def _sources(fun: Any) -> dict[str, list[str]]:
    """Source lines of the code in ``fun`` that no worker could read from a file."""
    sources: dict[str, list[str]] = {}
    for code in _codes(fun):
        filename = code.co_filename
        if filename in sources or os.path.exists(filename):
            continue
        lines = linecache.getlines(filename)
        if lines:
            sources[filename] = lines
    return sources


def _codes(fun: Any) -> Iterator[types.CodeType]:
    if isinstance(fun, type):
        for value in vars(fun).values():
            function = getattr(value, "__func__", value)
            if inspect.isfunction(function):
                yield function.__code__
        return
    code = getattr(getattr(fun, "func", fun), "__code__", None)  # functools.partial too
    if code is not None:
        yield code
