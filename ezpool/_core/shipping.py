"""The code a client sends to generic workers: its bytes, its id, its fingerprint, its source.

A function (or ``BaseWorker`` subclass) travels as one cloudpickle: by reference
when the worker can import its module, by value otherwise (``__main__``, a notebook
cell, a lambda) or when its module is listed in ``ship_modules``. A digest of its
content is its id, so a worker that has it already is sent nothing (and the
pickle is not even made). Code that has no file (a notebook cell) carries its
source lines, so a traceback from the worker still shows them. A *fingerprint*
of source or bytecode tells a worker that serves one named class whether it runs
the same code as the client.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import linecache
import os
import pickle
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, Union, cast

import cloudpickle

from .logs import get_logger

logger = get_logger(__name__)

__all__ = ["Shipment", "ship", "unpack", "fingerprint"]

ModuleLike = Union[str, types.ModuleType]


class Shipment:
    """A function ready to travel: its content id, and its pickle, made when first asked for.

    A worker that has the id already is sent nothing, so a call whose workers all
    hold the function never copies the big arrays it captures into a pickle.
    """

    __slots__ = ("fid", "_make", "_blob", "_lock")

    def __init__(self, fid: str, make: Callable[[], bytes]) -> None:
        self.fid = fid
        self._make: Optional[Callable[[], bytes]] = make
        self._blob: Optional[bytes] = None
        self._lock = threading.Lock()  # the threads of a dmap call may ask at once

    @property
    def blob(self) -> bytes:
        with self._lock:
            if self._blob is None:
                assert self._make is not None
                self._blob, self._make = self._make(), None
            return self._blob


def ship(fun: Any, by_value: Sequence[ModuleLike] = ()) -> Shipment:
    """Pickle ``fun`` (with the source lines of file-less code) for a generic worker.

    The id is a digest of a protocol-5 pickle whose big buffers (numpy arrays) are
    hashed where they are, not copied; the pickle a worker loads is made only
    when one needs it. Raises ``TypeError`` naming ``fun`` when it cannot be pickled.
    """
    modules = [importlib.import_module(m) if isinstance(m, str) else m for m in by_value]
    content = (fun, *_sources(fun))

    def dumps(**how: Any) -> bytes:
        for module in modules:
            cloudpickle.register_pickle_by_value(module)
        try:
            return cast(bytes, cloudpickle.dumps(content, **how))
        except Exception as exc:
            raise TypeError(f"cannot send {fun!r} to a worker: {exc}") from exc
        finally:
            for module in modules:
                cloudpickle.unregister_pickle_by_value(module)

    buffers: list[pickle.PickleBuffer] = []
    digest = hashlib.sha256(dumps(protocol=5, buffer_callback=buffers.append))
    for buffer in buffers:
        try:
            digest.update(hashlib.sha256(buffer.raw()).digest())
        except BufferError:  # not contiguous
            digest.update(hashlib.sha256(memoryview(buffer).tobytes()).digest())
    return Shipment(digest.hexdigest()[:32], functools.partial(dumps, protocol=pickle.HIGHEST_PROTOCOL))


def unpack(blob: bytes) -> Any:
    """The function in a shipment; its source lines go into ``linecache`` for tracebacks.

    cloudpickle 3 renames the file of code it sends by value to ``<dynamic-code>``;
    each such code object gets its own file name back, so that its lines are found.
    """
    fun, sources, origins = pickle.loads(blob)
    for filename, lines in sources.items():
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    if origins:
        for function in _functions(fun, lambda filename: filename != _DYNAMIC):
            function.__code__ = _renamed(function.__code__, origins)
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


#: The file name cloudpickle 3 gives all code it sends by value.
_DYNAMIC = "<dynamic-code>"

Origins = dict[tuple[str, int, bytes], str]


def _sources(fun: Any) -> tuple[dict[str, list[str]], Origins]:
    """Source lines of the code in ``fun`` that no worker could read from a file, and
    the file name of each such code object (by name, first line and bytecode)."""
    sources: dict[str, list[str]] = {}
    origins: Origins = {}
    has_file = functools.lru_cache(maxsize=None)(os.path.exists)  # one look per file
    for function in _functions(fun, has_file):
        for code in _nested(function.__code__):
            filename = code.co_filename
            if has_file(filename):
                continue
            origins[_code_key(code)] = filename
            if filename not in sources:
                lines = linecache.getlines(filename)
                if lines:
                    sources[filename] = lines
    return sources, origins


def _code_key(code: types.CodeType) -> tuple[str, int, bytes]:
    return code.co_name, code.co_firstlineno, hashlib.sha256(code.co_code).digest()[:8]


def _nested(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _nested(const)


def _renamed(code: types.CodeType, origins: Origins) -> types.CodeType:
    """``code`` (and the code inside it) with the file names recorded in ``origins``."""
    consts = tuple(_renamed(c, origins) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    filename = code.co_filename
    if filename == _DYNAMIC:
        filename = origins.get(_code_key(code), filename)
    return code.replace(co_filename=filename, co_consts=consts)


def _functions(fun: Any, has_file: Callable[[str], bool]) -> Iterator[Any]:
    """``fun`` and the file-less functions (and classes' functions) it reaches.

    A function from a notebook cell often calls a helper from another cell, or a
    class inherits its ``run`` from one: cloudpickle sends those by value too, so
    their source lines must travel with them. Names are followed only out of
    file-less code; code with a file needs nothing sent.
    """
    seen: set[int] = set()
    todo = [fun]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, functools.partial):  # a function or class with a context
            todo.append(item.func)
            continue
        if isinstance(item, type):
            for klass in item.__mro__[:-1]:  # every class but ``object``
                for value in vars(klass).values():
                    function = getattr(value, "__func__", value)
                    if inspect.isfunction(function):
                        todo.append(function)
            continue
        item = getattr(item, "func", item)  # functools.partial too
        code = getattr(item, "__code__", None)
        if code is None or not inspect.isfunction(item):
            continue
        yield item
        if not has_file(code.co_filename):
            todo.extend(_reached(item, code))


def _reached(function: Any, code: types.CodeType) -> Iterator[Any]:
    """The functions and classes ``function`` names among its globals and closure."""
    names = getattr(function, "__globals__", {})
    for name in _names(code):
        value = names.get(name)
        if inspect.isfunction(value) or isinstance(value, type):
            yield value
    for cell in getattr(function, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # a cell not filled yet
            continue
        if inspect.isfunction(value) or isinstance(value, type):
            yield value


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)
