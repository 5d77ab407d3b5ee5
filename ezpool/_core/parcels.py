"""The function a parallel call runs, and what it captures: sent once, cached by content.

How it travels (``Shelf`` in the calling process, ``Loader`` in each worker)::

    calling process (Shelf.publish)                     worker process (Loader)
    ───────────────────────────────                     ───────────────────────
    cloudpickle, protocol 5: a small pickle, the
    big buffers it names (numpy arrays, ...) and
    the big bytes and str it holds (immutables)
    each big buffer: equal, byte for byte, to a
      segment made earlier? reuse it; else copy it
      into a new segment (an anonymous memfd)
    each big bytes or str: the segment made for
      that very object (held since), or as a buffer
    fid = digest(pickle, the segments' ids)
    a worker that holds fid is sent only fid;     ──▶  fid known: the function it loaded
    another gets a Parcel: fid, the pickle, where ──▶  else map each buffer's segment read-
      the segments are, the fids worth keeping          only (/proc/CALLER/fd/N), read each
                                                        bytes or str from its own (once),
                                                        unpickle with them; forget the fids
                                                        the caller no longer keeps

So a second call with the same function sends a few bytes, and every worker
maps the same pages of a big array instead of holding its own copy. Captured
data that changed between calls is always seen: each big buffer is compared
with its segment (at memory speed, which beats any hash here), and the small
pickle is hashed whole. A big ``bytes`` or ``str`` cannot change: while the shelf
holds the function that captures it, it holds the object too, so that its id
stays its own, and a warm call finds its segment by that id (see ``immutables``).

A segment is a ``memfd``: a file with no name, which exists while a process
keeps it open or mapped. The calling process holds it until ``Shelf.close``
(``Pool.shutdown``) or its death; the workers map it while their cache holds a
function that uses it, and exit with the caller. Nothing is left in
``/dev/shm`` or anywhere else, whatever way the caller ends. Where memfd or
``/proc`` is missing, big buffers travel in the parcel itself (still once per
worker and content).

Mapped buffers are read-only in the workers: a task cannot change the data
that other workers and later calls share.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import mmap
import multiprocessing.util
import os
import pickle
import weakref
from typing import Any, Callable, NamedTuple, Optional, Union

from . import immutables
from .compare import same
from .logs import get_logger
from .serialization import pickle_by_name

logger = get_logger(__name__)

__all__ = ["Parcel", "Shelf", "Loader", "SHARED_LEAST"]

#: Buffers at least this big travel through a segment; smaller ones stay in the pickle.
SHARED_LEAST = 1 << 18

#: Pickles at most this long (a function found by name) are their own fid, unhashed.
_NAMED = 128

#: Functions the calling process (and so each worker) keeps, newest first.
KEPT = 8

#: Bytes of segments kept for older functions; the newest function's are always kept.
KEPT_BYTES = 1 << 28

#: Big buffers are copied by each worker (rather than mapped, shared) while all the
#: copies take at most this share of the memory available.
COPY_SHARE = 0.25

#: Bytes compared at a time (a bounded temporary when numpy does the comparing).
_STEP = 1 << 22


class Mapped(NamedTuple):
    """Where a worker finds a segment (the caller's pid and descriptor, the file's inode
    and size), and whether it copies it into memory of its own."""

    pid: int
    fd: int
    inode: int
    size: int
    copy: bool


class Parcel(NamedTuple):
    """A function as it travels to a worker that does not hold it yet."""

    fid: str
    blob: bytes  # the pickle, protocol 5, without its big buffers
    buffers: tuple[Union[Mapped, bytes], ...]  # each big buffer: a segment, or its bytes
    keep: tuple[str, ...]  # the fids the caller keeps: a worker may forget the others
    objects: tuple[Union[Mapped, bytes], ...] = ()  # each big bytes or str: a segment, or its bytes


class _Segment:
    """A big buffer copied into an anonymous memory file that the workers map."""

    def __init__(self, data: memoryview) -> None:
        self.size = data.nbytes
        self.fd = os.memfd_create("ezpool-data", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.size)
            self.map = mmap.mmap(self.fd, self.size)
            self.map[:] = data
        except BaseException:
            os.close(self.fd)
            raise
        self.where = Mapped(os.getpid(), self.fd, os.fstat(self.fd).st_ino, self.size, False)

    def holds(self, data: memoryview) -> bool:
        return same(data, memoryview(self.map))

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a view still open: the mapping goes with it
            self.map.close()
        os.close(self.fd)


class _Made(NamedTuple):
    """What the shelf made of a big ``bytes`` or ``str``: where it travels, what goes
    into the fid for it, and its segment (``None``: it travels in the parcel)."""

    part: Union[Mapped, bytes]
    stamp: bytes
    segment: Optional[_Segment]


class Shelf:
    """The calling process's side: functions published to its workers, and their segments."""

    def __init__(self) -> None:
        # fid -> the segments its function uses and the ids of its immutables, newest first
        self._recent: collections.OrderedDict[str, tuple[tuple[_Segment, ...], tuple[int, ...]]] = (
            collections.OrderedDict()
        )
        self._segments: list[_Segment] = []  # changed in place only: the finalizer holds it
        self._known: immutables.Known[_Made] = immutables.Known()  # the immutables of _recent
        # the bytes objects that read-only buffers of _recent lie in: (start, size) -> segment
        self._inside: immutables.Known[dict[tuple[int, int], _Segment]] = immutables.Known()
        self._shared = _can_share()
        # Closed by close(), or when this shelf is garbage-collected (a pool never shut down).
        self._finalizer = weakref.finalize(self, _close_all, self._segments)
        # A worker forked from this process must not keep these segments alive.
        multiprocessing.util.register_after_fork(self, Shelf.close)

    def publish(self, fun: Callable[..., Any], workers: int, main: Optional[str] = None) -> Parcel:
        """The parcel of ``fun`` for ``workers`` processes; ``TypeError`` naming ``fun``
        when it cannot be pickled. ``main``: see ``serialization.pickle_by_name``."""
        blob, buffers, objects = _pickle(fun, main)
        if not buffers and not objects and len(blob) <= _NAMED:  # a reference by name: no hashlib
            return self._keep("n" + blob.hex(), (), (), blob, (), ())
        import hashlib  # here, not at the top: a worker never needs it (OpenSSL, ~5 ms)

        digest = hashlib.sha256(blob)
        held: list[_Segment] = []
        parts: list[Union[Mapped, bytes]] = []
        big = sum(buffer.nbytes for buffer in buffers)
        copy = bool(buffers) and big * workers <= _available_memory() * COPY_SHARE
        owners: list[int] = []
        for buffer in buffers:
            if self._shared:
                segment = self._segment_of(buffer, owners)
                held.append(segment)
                where = segment.where._replace(copy=copy)
                parts.append(where)
                digest.update(repr(where).encode())
            else:
                data = bytes(buffer)
                parts.append(data)
                digest.update(hashlib.sha256(data).digest())
        places: list[Union[Mapped, bytes]] = []
        for obj in objects:
            made = self._made(obj)
            places.append(made.part)
            digest.update(made.stamp)
            if made.segment is not None:
                held.append(made.segment)
        fid = digest.hexdigest()[:32]
        if fid not in self._recent:
            logger.debug("function %s: %d bytes pickled, %d big buffers (%d bytes), %d big bytes or str",
                         fid, len(blob), len(buffers), sum(b.nbytes for b in buffers), len(objects))
        ids = (*(id(obj) for obj in objects), *owners)
        return self._keep(fid, tuple(held), ids, blob, tuple(parts), tuple(places))

    def _keep(
        self, fid: str, held: tuple[_Segment, ...], ids: tuple[int, ...], blob: bytes,
        parts: tuple[Any, ...], places: tuple[Any, ...],
    ) -> Parcel:
        """The parcel of ``fid``, now the newest function kept."""
        self._recent[fid] = (held, ids)
        self._recent.move_to_end(fid, last=False)
        self._trim()
        return Parcel(fid, blob, parts, tuple(self._recent), places)

    def _made(self, obj: Any) -> _Made:
        """What travels for a big ``bytes`` or ``str``: found by the object's identity
        (not copied, compared nor hashed again), else made and remembered."""
        made = self._known.get(obj)
        if made is None:
            data = immutables.as_bytes(obj)
            if self._shared:
                segment = self._segment_for(memoryview(data))
                made = _Made(segment.where, repr(segment.where).encode(), segment)
            else:
                import hashlib

                made = _Made(data, hashlib.sha256(data).digest(), None)
            self._known.add(obj, made)
        return made

    def holds(self, obj: Any) -> bool:
        """Whether this shelf holds ``obj`` (a big ``bytes`` or ``str`` a kept function captures)."""
        return obj in self._known

    def close(self) -> None:
        """Close every segment: the memory goes once the workers let go of it too."""
        self._recent.clear()
        self._known.clear()
        self._inside.clear()
        _close_all(self._segments)

    def _segment_of(self, buffer: memoryview, owners: list[int]) -> _Segment:
        """The segment of a big buffer. One that lies in a ``bytes`` object (a read-only
        array over it) is found by where it lies, while the shelf holds that object,
        whose id goes into ``owners``: it cannot change. Any other is compared."""
        inside = immutables.inside(buffer)
        if inside is None:
            return self._segment_for(buffer)
        owner, start = inside
        places = immutables.places_in(self._inside, owner, owners)
        segment = places.get((start, buffer.nbytes))
        if segment is None or not any(segment is kept for kept in self._segments):
            segment = places[start, buffer.nbytes] = self._segment_for(buffer)
        return segment

    def _segment_for(self, buffer: memoryview) -> _Segment:
        for segment in self._segments:
            if segment.size == buffer.nbytes and segment.holds(buffer):
                return segment
        segment = _Segment(buffer)
        self._segments.append(segment)
        return segment

    def _trim(self) -> None:
        """Forget the oldest functions beyond ``KEPT`` or ``KEPT_BYTES``; close the
        segments none of the others uses."""
        total = 0
        for rank, fid in enumerate(list(self._recent)):
            size = sum(segment.size for segment in set(self._recent[fid][0]))
            total += size
            if rank > 0 and (rank >= KEPT or total > KEPT_BYTES):
                del self._recent[fid]
        alive = {key for _, held in self._recent.values() for key in held}
        self._known.keep_only(alive)
        self._inside.keep_only(alive)
        used = {id(segment) for segments, _ in self._recent.values() for segment in segments}
        for segment in [s for s in self._segments if id(s) not in used]:
            self._segments.remove(segment)
            segment.close()


def _close_all(segments: list[_Segment]) -> None:
    """Close and forget every segment of ``segments``."""
    while segments:
        segments.pop().close()


class Loader:
    """A worker's side: the functions it holds, by fid (or why one could not be loaded)."""

    def __init__(self) -> None:
        self._functions: dict[str, Any] = {}
        self._uses: dict[str, tuple[Mapped, ...]] = {}  # the segments each function reads
        self._views: dict[Mapped, memoryview] = {}  # each opened once, whatever reads it
        self._objects: dict[tuple[str, Mapped], Any] = {}  # each bytes or str read once

    def receive(self, parcel: Parcel) -> None:
        """Load ``parcel``'s function (an exception is kept and raised by ``get``)."""
        self._functions = {fid: self._functions[fid] for fid in parcel.keep if fid in self._functions}
        mapped = tuple(part for part in parcel.buffers if isinstance(part, Mapped))
        try:
            for where in mapped:
                if where not in self._views:
                    self._views[where] = _open(where)
            buffers = [self._views[part] if isinstance(part, Mapped) else part for part in parcel.buffers]
            if parcel.objects:
                fun = immutables.loads(parcel.blob, functools.partial(self._rebuild, parcel.objects), buffers)
            else:
                fun = pickle.loads(parcel.blob, buffers=buffers)
            self._functions[parcel.fid] = fun
        except Exception as exc:
            self._functions[parcel.fid] = _LoadFailed(exc)
        self._uses[parcel.fid] = mapped + tuple(part for part in parcel.objects if isinstance(part, Mapped))
        self._uses = {fid: self._uses[fid] for fid in self._functions}
        used = {where for uses in self._uses.values() for where in uses}
        self._views = {where: view for where, view in self._views.items() if where in used}
        self._objects = {key: obj for key, obj in self._objects.items() if key[1] in used}

    def _rebuild(self, places: tuple[Union[Mapped, bytes], ...], kind: str, number: int) -> Any:
        """The ``number``-th big ``bytes`` or ``str`` of a parcel (read from its segment
        once, whatever functions use it)."""
        place = places[number]
        if not isinstance(place, Mapped):
            return immutables.from_bytes(kind, place)
        found = self._objects.get((kind, place))
        if found is None:
            found = self._objects[kind, place] = immutables.from_bytes(kind, _read(place))
        return found

    def get(self, fid: str) -> Callable[..., Any]:
        """The function under ``fid``, or the exception that loading it raised."""
        found = self._functions.get(fid)
        if found is None:
            raise RuntimeError(f"function {fid} was never sent to this worker process")
        if isinstance(found, _LoadFailed):
            raise found.exc
        return found


class _LoadFailed:
    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _pickle(fun: Any, main: Optional[str] = None) -> tuple[bytes, list[memoryview], list[Any]]:
    """``fun`` pickled (protocol 5) without its big buffers and big ``bytes`` and
    ``str`` objects, those buffers, and those objects.

    A function found by its module and name needs no cloudpickle (and has no
    buffers): plain pickle sends what cloudpickle would, and neither side imports it.
    """
    blob = pickle_by_name(fun, main)
    if blob is not None:
        return blob, [], []
    buffers: list[memoryview] = []

    def aside(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: in the pickle
            return True
        if raw.nbytes < SHARED_LEAST:
            return True
        buffers.append(raw)
        return False

    try:
        blob, objects = immutables.dumps(fun, SHARED_LEAST, aside)
    except Exception as exc:
        raise TypeError(f"cannot send {fun!r} to another process: {exc}") from exc
    return blob, buffers, objects


def _opened(where: Mapped) -> int:
    """A descriptor of a segment of the calling process (checked to be that segment)."""
    fd = os.open(f"/proc/{where.pid}/fd/{where.fd}", os.O_RDONLY | os.O_CLOEXEC)
    found = os.fstat(fd)
    if found.st_ino != where.inode or found.st_size != where.size:
        os.close(fd)
        raise RuntimeError(f"shared segment {where} is gone from the calling process")
    return fd


def _read(where: Mapped) -> bytes:
    """What a segment of the calling process holds, read into this process's memory."""
    fd = _opened(where)
    try:
        return immutables.read_whole(fd, where.size)
    finally:
        os.close(fd)


def _open(where: Mapped) -> memoryview:
    """A read-only view of a segment of the calling process, or of a copy of it."""
    fd = _opened(where)
    try:
        if where.size == 0:
            return memoryview(b"")
        shared = mmap.mmap(fd, where.size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    if not where.copy:
        return memoryview(shared)
    return _copied(shared, where.size).toreadonly()


def _copied(shared: mmap.mmap, size: int) -> memoryview:
    """Private memory holding what ``shared`` holds.

    Shared memory gets no huge pages on most systems (``shmem_enabled``), and
    scattered reads of it miss the TLB far more often: private memory is read up
    to twice as fast. The pages read are let go as the copy goes, so the process
    never holds much more than the one copy.
    """
    private = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20))
    with contextlib.suppress(AttributeError, OSError):
        private.madvise(mmap.MADV_HUGEPAGE)
    source, target = memoryview(shared), memoryview(private)
    for start in range(0, size, _STEP):
        stop = min(start + _STEP, size)
        target[start:stop] = source[start:stop]
        with contextlib.suppress(AttributeError, OSError):
            shared.madvise(mmap.MADV_DONTNEED, start, stop - start)
    source.release()
    shared.close()
    return target


def _available_memory() -> int:
    """Bytes of memory available for new data (``MemAvailable``), or all of it."""
    try:
        with open("/proc/meminfo", encoding="ascii") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 0


def _can_share() -> bool:
    """Whether segments work here: memfd, and a worker may open the caller's ``/proc/PID/fd``."""
    if not hasattr(os, "memfd_create"):
        return False
    try:
        fd = os.memfd_create("ezpool-probe", os.MFD_CLOEXEC)
    except OSError:
        return False
    try:
        os.close(os.open(f"/proc/{os.getpid()}/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC))
    except OSError:
        logger.debug("no /proc/PID/fd here: big buffers travel through the pipes")
        return False
    finally:
        os.close(fd)
    return True
