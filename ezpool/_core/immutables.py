"""Big immutable objects a function captures (``bytes``, ``str``): set aside from its
pickle, and known by identity while a pool holds them.

cloudpickle writes a captured ``bytes`` or ``str`` into the pickle itself (protocol 5
sets aside only buffers, such as numpy arrays), so a closure over 200 MB of bytes
would be pickled and hashed again on every call. ``dumps`` sets those objects
aside too::

    dumps(fun)                                   loads(blob, rebuild)
    ──────────                                   ────────────────────
    cloudpickle, protocol 5; each ``bytes`` or
    ``str`` at least SHARED_LEAST long (alone or
    in a tuple, a dict, ...) becomes a persistent
    id (kind, n): the n-th object set aside  ──▶  rebuild(kind, n): the object again

``Known`` remembers, by identity, what a pool made of each such object (a segment,
a digest) while it holds a reference to the object: the id of a live object is
never another object's, and a ``bytes`` or ``str`` never changes, so a warm call
that captures the same object again neither copies, compares nor hashes it. The
pool lets go of the object when no function it keeps uses it any more.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from collections.abc import Iterable
from typing import Any, Callable, Generic, Optional, TypeVar

from .logs import get_logger

logger = get_logger(__name__)

__all__ = ["BYTES", "STR", "dumps", "loads", "as_bytes", "from_bytes", "inside", "read_whole", "Known",
           "places_in"]

#: Kinds of objects set aside, as they appear in a persistent id.
BYTES, STR = "b", "s"

_KINDS: dict[type, str] = {bytes: BYTES, str: STR}

#: The most ``os.pread`` reads at once on Linux.
_READ_MOST = 0x7FFFF000

T = TypeVar("T")


def dumps(
    obj: Any, least: int, buffer_callback: Optional[Callable[[pickle.PickleBuffer], Any]] = None
) -> tuple[bytes, list[Any]]:
    """``obj`` pickled by cloudpickle (protocol 5) without the ``bytes`` and ``str``
    objects of at least ``least`` items it holds, and those objects, in the order the
    persistent ids of the pickle number them (each object once)."""
    import cloudpickle  # imported when first needed: ``import ezpool`` stays light

    aside: list[Any] = []
    numbers: dict[int, int] = {}

    def persistent_id(item: Any) -> Optional[tuple[str, int]]:
        kind = _KINDS.get(type(item))
        if kind is None or len(item) < least:
            return None
        number = numbers.get(id(item))
        if number is None:
            number = numbers[id(item)] = len(aside)
            aside.append(item)
        return kind, number

    with io.BytesIO() as file:
        pickler = cloudpickle.Pickler(file, protocol=5, buffer_callback=buffer_callback)
        pickler.persistent_id = persistent_id
        pickler.dump(obj)
        return file.getvalue(), aside


def loads(blob: bytes, rebuild: Callable[[str, int], Any], buffers: Iterable[Any] = ()) -> Any:
    """What ``dumps`` pickled: ``rebuild(kind, n)`` gives back each object set aside."""
    unpickler = pickle.Unpickler(io.BytesIO(blob), buffers=buffers)

    def persistent_load(pid: Any) -> Any:
        kind, number = pid
        return rebuild(kind, number)

    unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    return unpickler.load()


def as_bytes(obj: Any) -> Any:
    """The bytes that stand for an object set aside: a ``bytes`` object itself, a
    ``str``'s UTF-8 (lone surrogates included)."""
    return obj.encode("utf-8", "surrogatepass") if type(obj) is str else obj


def from_bytes(kind: str, data: Any) -> Any:
    """The object of ``kind`` that ``data`` (what ``as_bytes`` gave) stands for."""
    if kind == STR:
        return str(data, "utf-8", "surrogatepass")
    if kind == BYTES:
        return data if type(data) is bytes else bytes(data)
    raise ValueError(f"unknown kind of object set aside: {kind!r}")


def inside(buffer: memoryview) -> Optional[tuple[bytes, int]]:
    """The ``bytes`` object a read-only buffer lies in (a read-only numpy array made
    over it, or a view of such an array), and where in it the buffer starts; ``None``
    for any other buffer, whose content may change under it."""
    numpy = sys.modules.get("numpy")
    if not buffer.readonly or numpy is None:
        return None
    owner = buffer.obj
    while isinstance(owner, numpy.ndarray):
        owner = owner.base
    if type(owner) is not bytes:
        return None
    address = numpy.frombuffer(buffer, numpy.uint8).ctypes.data
    start = address - numpy.frombuffer(owner, numpy.uint8).ctypes.data
    if not 0 <= start <= len(owner) - buffer.nbytes:
        return None
    return owner, start


def read_whole(fd: int, size: int) -> bytes:
    """The first ``size`` bytes of the file ``fd``, read into one new ``bytes`` object.

    Read, not mapped: a worker holds its private copy only, never the pages of the
    caller's segment besides it (a 200 MB ``bytes`` costs it 200 MB at its peak).
    """
    if size <= _READ_MOST:
        data = os.pread(fd, size, 0)
        if len(data) == size:
            return data
    whole = bytearray(size)  # a file read in steps (or a short read): one more copy
    view, done = memoryview(whole), 0
    while done < size:
        count = os.preadv(fd, [view[done : done + _READ_MOST]], done)
        if count <= 0:
            raise EOFError(f"the segment ends after {done} of its {size} bytes")
        done += count
    return bytes(whole)


class Known(Generic[T]):
    """What a pool made of each object set aside (``T``: a segment, a digest), by the
    object's identity, with a reference to the object that keeps its id its own."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[Any, T]] = {}

    def get(self, obj: Any) -> Optional[T]:
        found = self._known.get(id(obj))
        return found[1] if found is not None and found[0] is obj else None

    def add(self, obj: Any, made: T) -> None:
        self._known[id(obj)] = (obj, made)

    def keep_only(self, ids: set[int]) -> None:
        """Let go of every object whose id is not in ``ids``."""
        for key in [key for key in self._known if key not in ids]:
            del self._known[key]

    def clear(self) -> None:
        self._known.clear()

    def __len__(self) -> int:
        return len(self._known)

    def __contains__(self, obj: Any) -> bool:
        return self.get(obj) is not None


Places = dict[tuple[int, int], T]


def places_in(known: Known[Places[T]], owner: Any, owners: list[int]) -> Places[T]:
    """What ``known`` made of each (start, length) place within the ``bytes`` object
    ``owner`` (made empty the first time), with ``owner``'s id added to ``owners``."""
    places = known.get(owner)
    if places is None:
        places = {}
        known.add(owner, places)
    owners.append(id(owner))
    return places
