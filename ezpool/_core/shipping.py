"""The code a client sends to generic workers: its bytes, its id, its fingerprint, its source.

A function (or ``BaseWorker`` subclass) travels as one cloudpickle: by reference
when the worker can import its module, by value otherwise (``__main__``, a notebook
cell, a lambda) or when its module is listed in ``ship_modules``. A digest of its
content is its id, so a worker that has it already is sent nothing (and the
pickle is not even made). Code that has no file (a notebook cell) carries its
source lines, so a traceback from the worker still shows them. A *fingerprint*
of source or bytecode tells a worker that serves one named class whether it runs
the same code as the client.

A pool's ``Shipper`` remembers what it shipped lately, so that a warm call hashes
only what is new::

    Shipper.ship(fun)
    ─────────────────
    cloudpickle, protocol 5: a small pickle (hashed), its big buffers and its big
    bytes and str (``immutables``) set aside
    each big buffer: equal, byte for byte, to a copy   ──▶  its digest, kept with the copy
      of one shipped lately? else hash it, keep a copy
    each big bytes or str: the same object as one      ──▶  its digest, kept while the
      shipped lately (held since, so its id is its own)?      shipper holds the object
      else hash it
    id = digest(pickle, their digests)

So the id changes whenever the content does, and a call that captures the same
200 MB array as the last one compares it (~15 ms) instead of hashing it (~230 ms).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import inspect
import linecache
import mmap
import os
import pickle
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional, Union, cast

import cloudpickle

from . import immutables
from .compare import same
from .logs import get_logger

logger = get_logger(__name__)

__all__ = ["Shipment", "Shipper", "ship", "unpack", "contents", "fingerprint"]

ModuleLike = Union[str, types.ModuleType]

#: Buffers, ``bytes`` and ``str`` at least this big are compared with (or known
#: as) what was shipped lately; smaller ones are hashed with the pickle.
BIG = 1 << 18

#: Functions a shipper keeps the copies and objects of, newest first.
KEPT = 8

#: Bytes of copies kept for older functions; the newest function's are always kept.
KEPT_BYTES = 1 << 28


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


class _Copy:
    """A big buffer as it was shipped, and its digest."""

    __slots__ = ("data", "digest")

    def __init__(self, data: Union[bytes, mmap.mmap], digest: bytes) -> None:
        self.data, self.digest = data, digest


def _copied(raw: memoryview) -> Union[bytes, mmap.mmap]:
    """A copy of ``raw``, in huge pages where the system gives them (half the time of
    ``bytes(raw)``: a 200 MB copy takes 50 ms instead of 100)."""
    try:
        copy = mmap.mmap(-1, raw.nbytes, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20))
    except (OSError, ValueError, TypeError):
        return bytes(raw)
    with contextlib.suppress(AttributeError, OSError):
        copy.madvise(mmap.MADV_HUGEPAGE)
    copy[:] = raw
    return copy


class Shipper:
    """A pool's shipments: what its functions captured lately, for the ids of the next.

    Keeps the copies of the big buffers and the big ``bytes`` and ``str`` objects of
    the last ``KEPT`` functions shipped (those of older ones past ``KEPT_BYTES`` of
    copies are let go; the newest function's always stay), until ``close``.
    """

    def __init__(self, remember: bool = True) -> None:
        self._remember = remember  # False: nothing is kept for a next call (no copies made)
        # fid -> the copies its function's buffers match and the ids of its immutables, newest first
        self._recent: OrderedDict[str, tuple[tuple[_Copy, ...], tuple[int, ...]]] = OrderedDict()
        self._copies: list[_Copy] = []
        self._known: immutables.Known[bytes] = immutables.Known()  # digests of the immutables of _recent
        # the bytes objects that read-only buffers of _recent lie in: (start, size) -> digest
        self._inside: immutables.Known[dict[tuple[int, int], bytes]] = immutables.Known()
        self._lock = threading.Lock()  # calls may start from several threads

    def ship(self, fun: Any, by_value: Sequence[ModuleLike] = ()) -> Shipment:
        """Pickle ``fun`` (with the source lines of file-less code) for a generic worker.

        The id is a digest of a protocol-5 pickle, of its big buffers (numpy arrays)
        and of its big ``bytes`` and ``str``, none of them copied into the pickle; the
        pickle a worker loads is made only when one needs it. Raises ``TypeError``
        naming ``fun`` when it cannot be pickled.
        """
        modules = [importlib.import_module(m) if isinstance(m, str) else m for m in by_value]
        content = (fun, *_sources(fun))

        def dumps(make: Callable[[], Any]) -> Any:
            for module in modules:
                cloudpickle.register_pickle_by_value(module)
            try:
                return make()
            except Exception as exc:
                raise TypeError(f"cannot send {fun!r} to a worker: {exc}") from exc
            finally:
                for module in modules:
                    cloudpickle.unregister_pickle_by_value(module)

        buffers: list[pickle.PickleBuffer] = []
        blob, objects = dumps(lambda: immutables.dumps(content, BIG, buffers.append))
        digest = hashlib.sha256(blob)
        with self._lock:
            owners: list[int] = []
            copies = [self._digest(buffer, owners) for buffer in buffers]
            for copy in copies:
                digest.update(copy.digest if isinstance(copy, _Copy) else copy)
            for obj in objects:
                digest.update(self._stamp(obj))
            fid = digest.hexdigest()[:32]
            kept = tuple(copy for copy in copies if isinstance(copy, _Copy))
            if self._remember:
                self._keep(fid, kept, (*(id(obj) for obj in objects), *owners))
        return Shipment(fid, lambda: cast(bytes, dumps(functools.partial(_packed, content))))

    def holds(self, obj: Any) -> bool:
        """Whether this shipper holds ``obj`` (a big ``bytes`` or ``str`` a kept function captures)."""
        return obj in self._known

    def close(self) -> None:
        """Let go of every copy and object."""
        with self._lock:
            self._recent.clear()
            self._copies.clear()
            self._known.clear()
            self._inside.clear()

    def _digest(self, buffer: pickle.PickleBuffer, owners: list[int]) -> Union[_Copy, bytes]:
        """The digest of a buffer: a copy's (equal byte for byte), or new; a big one's is
        kept with a copy of it. One that lies in a ``bytes`` object (a read-only array
        over it) is known by where it lies while the shipper holds that object, whose
        id goes into ``owners``."""
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous
            return hashlib.sha256(memoryview(buffer).tobytes()).digest()
        if raw.nbytes < BIG or not self._remember:
            return hashlib.sha256(raw).digest()
        inside = immutables.inside(raw)
        if inside is not None:
            owner, start = inside
            places = immutables.places_in(self._inside, owner, owners)
            stamp = places.get((start, raw.nbytes))
            if stamp is None:
                stamp = places[start, raw.nbytes] = hashlib.sha256(raw).digest()
            return stamp
        for copy in self._copies:
            if len(copy.data) == raw.nbytes and same(raw, memoryview(copy.data)):
                return copy
        copy = _Copy(_copied(raw), hashlib.sha256(raw).digest())
        self._copies.append(copy)
        return copy

    def _stamp(self, obj: Any) -> bytes:
        """The digest of a big ``bytes`` or ``str``: found by the object's identity, or new."""
        stamp = self._known.get(obj)
        if stamp is None:
            stamp = hashlib.sha256(immutables.as_bytes(obj)).digest()
            if self._remember:
                self._known.add(obj, stamp)
        return stamp

    def _keep(self, fid: str, copies: tuple[_Copy, ...], ids: tuple[int, ...]) -> None:
        """``fid`` is the newest function shipped: forget the oldest beyond ``KEPT`` or
        ``KEPT_BYTES``, and the copies and objects no function kept uses."""
        self._recent[fid] = (copies, ids)
        self._recent.move_to_end(fid, last=False)
        total = 0
        for rank, older in enumerate(list(self._recent)):
            total += sum(len(copy.data) for copy in set(self._recent[older][0]))
            if rank > 0 and (rank >= KEPT or total > KEPT_BYTES):
                del self._recent[older]
        used = {id(copy) for kept, _ in self._recent.values() for copy in kept}
        self._copies[:] = [copy for copy in self._copies if id(copy) in used]
        alive = {key for _, held in self._recent.values() for key in held}
        self._known.keep_only(alive)
        self._inside.keep_only(alive)


def ship(fun: Any, by_value: Sequence[ModuleLike] = ()) -> Shipment:
    """``Shipper.ship`` for a function shipped once (nothing is kept, nor copied, for a next)."""
    return Shipper(remember=False).ship(fun, by_value)


#: How a shipment's blob begins: a pickle whose buffers follow it (never a pickle's start).
_PACKED = b"EZPOOL-PACKED-5\n"


def _packed(content: Any) -> bytes:
    """``content`` pickled (protocol 5), then each of its buffers (numpy arrays) as it is.

    A worker puts each big buffer into memory of its own in huge pages (``_private``):
    an array unpickled from inside a pickle lies in a ``bytearray``'s small pages, and
    strided reads of it miss the TLB so often that they take up to 4 times as long.
    """
    raws: list[memoryview] = []

    def aside(buffer: pickle.PickleBuffer) -> bool:
        try:
            raws.append(buffer.raw())
        except BufferError:  # not contiguous: in the pickle
            return True
        return False

    small = cloudpickle.dumps(content, protocol=5, buffer_callback=aside)
    head = pickle.dumps((small, [(raw.nbytes, raw.readonly) for raw in raws]), pickle.HIGHEST_PROTOCOL)
    return b"".join([_PACKED, len(head).to_bytes(8, "little"), head, *raws])


def _unpacked(blob: bytes) -> Any:
    """What ``_packed`` packed."""
    view, start = memoryview(blob), len(_PACKED) + 8
    end = start + int.from_bytes(view[len(_PACKED) : start], "little")
    small, sizes = pickle.loads(view[start:end])
    buffers: list[Any] = []
    for size, readonly in sizes:
        part, end = view[end : end + size], end + size
        buffers.append(_private(part, readonly))
    return pickle.loads(small, buffers=buffers)


def _private(data: memoryview, readonly: bool) -> Any:
    """A copy of ``data`` (read-only, or not, as the buffer was in the caller), a big one
    in huge pages where the system gives them; the blob itself is let go."""
    if data.nbytes < BIG:
        return bytes(data) if readonly else bytearray(data)
    copy = _copied(data)
    if readonly:
        return memoryview(copy).toreadonly()
    return copy if isinstance(copy, mmap.mmap) else bytearray(copy)


def contents(blob: bytes) -> tuple[Any, dict[str, list[str]], Origins]:
    """What a shipment's blob holds: the function, the source lines of its file-less
    code, and their file names (see ``_sources``)."""
    packed = blob[: len(_PACKED)] == _PACKED
    return cast(tuple[Any, dict[str, list[str]], Origins], _unpacked(blob) if packed else pickle.loads(blob))


def unpack(blob: bytes) -> Any:
    """The function in a shipment; its source lines go into ``linecache`` for tracebacks.

    cloudpickle 3 renames the file of code it sends by value to ``<dynamic-code>``;
    each such code object gets its own file name back, so that its lines are found.
    """
    fun, sources, origins = contents(blob)
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
