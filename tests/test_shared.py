"""Functions and what they capture travel to the parallel workers once, cached by content."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from ezpool import Pool
from ezpool._core import parcels as shared_module
from ezpool._core.parcels import Loader, Shelf
from tests import _helpers as h
from tests.conftest import eventually

numpy = pytest.importorskip("numpy")

#: Elements of a float64 array big enough to travel through a segment.
BIG = 2 * shared_module.SHARED_LEAST // 8


@pytest.fixture
def pool():
    with Pool("parallel", ncpu=2, progress=False) as opened:
        yield opened


def _segments(pid: int | str = "self") -> list[str]:
    """The segments a process holds open or mapped."""
    found = []
    with open(f"/proc/{pid}/maps", encoding="ascii") as maps:
        found += [line.split()[-2] for line in maps if "memfd:ezpool-data" in line]
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "memfd:ezpool-data" in target:
            found.append(target)
    return found


def _ours_in_dev_shm() -> set[str]:
    """Names EzPool could have left in /dev/shm (other programs' come and go)."""
    names = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return {name for name in names if "ezpool" in name}


def _loads(log: Path) -> collections.Counter:
    return collections.Counter(log.read_text(encoding="utf-8").split() if log.exists() else [])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_context_reaches_every_worker_once_across_calls(tmp_path, start_method):
    log = tmp_path / "loads"
    context = h.CountsUnpickling(str(log))
    with Pool("parallel", ncpu=2, start_method=start_method, progress=False) as pool:
        workers: set[str] = set()
        for _ in range(2):
            fun = lambda context, n: h.pid_after_nap(n, 0.02)  # noqa: E731
            results = pool.pmap(fun, range(20), chunksize=1, context=context)
            workers |= {str(pid) for pid in results.values()}
    loads = _loads(log)
    assert set(loads) == workers  # each worker that ran a task loaded it...
    assert set(loads.values()) == {1}  # ...once, for both calls


@pytest.mark.timeout(60)
def test_the_same_function_is_not_sent_again(pool, tmp_path):
    log = tmp_path / "loads"
    marker = h.CountsUnpickling(str(log))
    fun = lambda n: (marker, n)[1]  # noqa: E731 - captures the marker
    for _ in range(3):
        assert pool.pmap(fun, range(20), chunksize=1) == {n: n for n in range(20)}
    assert set(_loads(log).values()) == {1}
    before = sum(_loads(log).values())
    fresh = lambda n: (marker, n + 1)[1]  # noqa: E731 - other code: sent once more
    assert pool.pmap(fresh, [1]) == {1: 2}
    assert sum(_loads(log).values()) == before + 1


@pytest.mark.timeout(60)
def test_captured_data_changed_between_calls_gives_the_new_values(pool):
    big = numpy.zeros(BIG)
    small = [0] * 4
    fun = lambda n: (float(big[n]), small[n])  # noqa: E731
    assert pool.pmap(fun, range(4)) == {n: (0.0, 0) for n in range(4)}
    big[2] = 5.0  # changed in place: same object, same size
    small[3] = 7
    assert pool.pmap(fun, range(4)) == {0: (0.0, 0), 1: (0.0, 0), 2: (5.0, 0), 3: (0.0, 7)}
    big[2] = 0.0  # and back: the first copy again
    assert pool.pmap(fun, range(4))[2] == (0.0, 0)


@pytest.mark.timeout(60)
def test_captured_arrays_are_read_only_in_the_workers(pool):
    big = numpy.ones(BIG)

    def scale(n):
        big[n] *= 2
        return float(big[n])

    results = pool.pmap(scale, [0])
    assert isinstance(results.errors[0], ValueError) and "read-only" in str(results.errors[0])
    assert pool.pmap(lambda n: float(big[n]), [0]) == {0: 1.0}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("copy", [True, False], ids=["copied", "mapped"])
def test_workers_copy_or_map_segments_and_shutdown_closes_them(monkeypatch, copy):
    monkeypatch.setattr(shared_module, "COPY_SHARE", 1.0 if copy else 0.0)
    big = numpy.arange(BIG, dtype=numpy.float64)
    pool = Pool("parallel", ncpu=2, progress=False)
    try:
        results = pool.pmap(lambda n: float(big[n]), range(8), chunksize=1)
        assert results == {n: float(n) for n in range(8)}
        assert _segments()  # the caller holds the segment
        for worker in set(results.workers.values()):
            mapped = _segments(worker.split()[1])
            assert bool(mapped) is not copy, mapped
    finally:
        pool.shutdown()
    assert _segments() == []


_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import numpy
    from ezpool import Pool
    from ezpool._core import parcels as shared
    shared.COPY_SHARE = 0.0  # the workers map the segment
    big = numpy.arange({size}, dtype=numpy.float64)
    pool = Pool("parallel", ncpu=2, progress=False)
    results = pool.pmap(lambda n: float(big[n]), range(8), chunksize=1)
    workers = sorted({{int(w.split()[1]) for w in results.workers.values()}})
    print(os.getpid(), *workers, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.timeout(60)
def test_no_segment_outlives_a_caller_killed_by_sigkill(tmp_path, core_child_env, core_python):
    shm_before = _ours_in_dev_shm()
    script = tmp_path / "caller.py"
    script.write_text(_SCRIPT.format(size=BIG), encoding="utf-8")
    command = [core_python, str(script)]
    process = subprocess.Popen(command, env=core_child_env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        pids = [int(word) for word in process.stdout.readline().split()]
        assert len(pids) >= 2, pids
        for pid in pids:
            assert _segments(pid), pid  # the caller and each worker hold it
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        eventually(lambda: not any(h.pid_alive(pid) for pid in pids[1:]), "the workers to exit", 10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
    for pid in pids:  # no process holds it: the memory is gone, and it never had a name
        assert not os.path.exists(f"/proc/{pid}/maps") or _segments(pid) == []
    assert _ours_in_dev_shm() <= shm_before


# --- the two sides, in one process ------------------------------------------------------


@pytest.mark.parametrize("numpy_loaded", [True, False])
def test_a_big_buffer_differing_in_any_one_byte_is_not_the_same(monkeypatch, numpy_loaded):
    from ezpool._core.compare import same as _same

    if not numpy_loaded:
        monkeypatch.delitem(sys.modules, "numpy")
    size = (1 << 23) + 5  # over one slice of the comparison, and not a whole number of words
    original = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert _same(memoryview(original), memoryview(bytearray(original)))
    for spot in (0, 7, 8, size // 2, (1 << 23) - 1, size - 6, size - 1):
        changed = bytearray(original)
        changed[spot] ^= 1
        assert not _same(memoryview(original), memoryview(changed)), spot
        assert not _same(memoryview(changed), memoryview(original)), spot


def test_the_id_follows_the_content_and_a_loader_forgets_what_the_caller_dropped():
    shelf = Shelf()
    try:
        big = numpy.zeros(BIG)

        def made():  # a new function object each time, with the same code and data
            return lambda n: big[n] + n

        first = shelf.publish(made(), 2)
        again = shelf.publish(made(), 2)
        assert again.fid == first.fid and len(first.blob) < 4096
        big[1] = 1.0
        changed = shelf.publish(made(), 2)
        assert changed.fid != first.fid and changed.keep[0] == changed.fid
        loader = Loader()
        loader.receive(first)
        loader.receive(changed)
        assert loader.get(changed.fid)(1) == 2.0
        assert loader.get(first.fid)(1) == 1.0  # kept, as the caller keeps it
        for n in range(shared_module.KEPT):
            loader.receive(shelf.publish(lambda x, n=n: x + n, 2))
        with pytest.raises(RuntimeError, match="never sent"):
            loader.get(first.fid)
    finally:
        shelf.close()


def test_functions_that_capture_the_same_array_share_one_copy_in_a_worker():
    shelf = Shelf()
    try:
        big = numpy.zeros(BIG)
        one, other = shelf.publish(lambda n: big, 2), shelf.publish(lambda n: (big, n)[0], 2)
        assert one.fid != other.fid and one.buffers == other.buffers
        loader = Loader()
        loader.receive(one)
        loader.receive(other)
        assert numpy.shares_memory(loader.get(one.fid)(0), loader.get(other.fid)(0))
    finally:
        shelf.close()


def test_without_segments_big_buffers_travel_in_the_parcel(monkeypatch):
    monkeypatch.setattr(shared_module, "_can_share", lambda: False)
    shelf = Shelf()
    big = numpy.arange(BIG, dtype=numpy.float64)
    parcel = shelf.publish(lambda n: big[n], 2)
    assert [type(part) for part in parcel.buffers] == [bytes]
    loader = Loader()
    loader.receive(parcel)
    assert loader.get(parcel.fid)(5) == 5.0
    big[5] = -1.0
    assert shelf.publish(lambda n: big[n], 2).fid != parcel.fid


def test_a_function_that_cannot_be_loaded_fails_each_time_it_is_asked_for():
    shelf = Shelf()
    parcel = shelf.publish(h.square, 2)
    broken = parcel._replace(blob=parcel.blob[:-3])
    loader = Loader()
    loader.receive(broken)
    for _ in range(2):
        with pytest.raises(Exception):  # noqa: B017 - whatever unpickling raises
            loader.get(parcel.fid)
    shelf.close()


def test_a_function_that_cannot_be_pickled_is_named(pool):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot send <function"):
        pool.pmap(lambda n: lock, [1])
    with pytest.raises(TypeError, match="cannot send <function"):  # not the context's fault
        pool.pmap(lambda context, n: lock, [1], context=1)


@pytest.mark.timeout(60)
def test_a_pool_never_shut_down_lets_its_segments_go_when_collected():
    import gc

    big = numpy.ones(BIG)
    pool = Pool("parallel", ncpu=1, progress=False)
    assert pool.pmap(lambda n: float(big[n]), [0]) == {0: 1.0}
    assert _segments()
    del pool
    gc.collect()
    assert _segments() == []


# --- big bytes and str: known by identity while the shelf holds them ----------------------------

#: Bytes big enough to be set aside from the pickle.
BYTES = 4 * shared_module.SHARED_LEAST


class _Compares:
    """Counts the byte-for-byte comparisons of the shelf."""

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        same = shared_module.same

        def counted(left, right):
            self.count += 1
            return same(left, right)

        monkeypatch.setattr(shared_module, "same", counted)


def test_a_captured_bytes_object_travels_beside_the_pickle_and_a_warm_call_only_finds_it(monkeypatch):
    compares = _Compares(monkeypatch)
    shelf = Shelf()
    try:
        big = os.urandom(BYTES)

        def made():  # a new function object each time, capturing the same bytes
            return lambda n: big[n]

        first = shelf.publish(made(), 2)
        assert len(first.blob) < 4096 and len(first.objects) == 1 and big not in first.blob
        segments = _segments()
        compares.count = 0
        again = shelf.publish(made(), 2)
        assert again.fid == first.fid and again.objects == first.objects
        assert compares.count == 0 and _segments() == segments  # found by identity: no compare, no copy
        loader = Loader()
        loader.receive(again)
        assert loader.get(again.fid)(7) == big[7]
    finally:
        shelf.close()


def test_bytes_equal_to_ones_sent_share_their_segment_and_other_bytes_get_their_own():
    shelf = Shelf()
    try:
        def made(data):
            return lambda n: data[n]

        big = os.urandom(BYTES)
        first = shelf.publish(made(big), 2)
        equal = bytes(bytearray(big))  # another object, the same content
        assert equal is not big and shelf.publish(made(equal), 2).fid == first.fid
        other = big[:-1] + bytes([big[-1] ^ 1])
        changed = shelf.publish(made(other), 2)
        assert changed.fid != first.fid and changed.objects != first.objects
    finally:
        shelf.close()


def test_str_tuples_and_repeated_objects_come_back_as_they_were():
    shelf = Shelf()
    try:
        text = "é\ud800" + "x" * BYTES  # not ASCII, and a lone surrogate: it still comes back
        raw = os.urandom(BYTES)
        held = (raw, (text, raw), {"k": raw}, b"small", "small")
        parcel = shelf.publish(lambda: held, 2)
        assert len(parcel.objects) == 2 and len(parcel.blob) < 4096  # raw once, text once
        loader, other = Loader(), shelf.publish(lambda: (raw, text), 2)
        loader.receive(parcel)
        loader.receive(other)
        back = loader.get(parcel.fid)()
        assert back == held and type(back[0]) is bytes and type(back[1][0]) is str
        assert back[0] is back[1][1] is back[2]["k"]  # one object, as in the caller
        assert loader.get(other.fid)()[0] is back[0]  # read once, whatever function uses it
    finally:
        shelf.close()


def test_the_shelf_holds_captured_bytes_only_while_it_keeps_their_function():
    shelf = Shelf()
    try:
        big = os.urandom(BYTES)
        alone = sys.getrefcount(big)
        shelf.publish(lambda n: big[n], 2)
        assert shelf.holds(big) and sys.getrefcount(big) == alone + 1
        for n in range(shared_module.KEPT):  # the function leaves the shelf's recent set
            shelf.publish(lambda x, n=n: x + n, 2)
        assert not shelf.holds(big) and sys.getrefcount(big) == alone
        shelf.publish(lambda n: big[n], 2)
        assert shelf.holds(big)
    finally:
        shelf.close()
    assert not shelf.holds(big) and sys.getrefcount(big) == alone


def test_without_segments_big_bytes_travel_in_the_parcel(monkeypatch):
    monkeypatch.setattr(shared_module, "_can_share", lambda: False)
    shelf = Shelf()
    def made(data):
        return lambda n: data[n]

    big = os.urandom(BYTES)
    parcel = shelf.publish(made(big), 2)
    assert parcel.objects == (big,) and big not in parcel.blob
    loader = Loader()
    loader.receive(parcel)
    assert loader.get(parcel.fid)(3) == big[3]
    assert shelf.publish(made(big), 2).fid == parcel.fid
    assert shelf.publish(made(bytes(bytearray(big))), 2).fid == parcel.fid
    assert shelf.publish(made(os.urandom(BYTES)), 2).fid != parcel.fid


@pytest.mark.timeout(120)
def test_fresh_bytes_in_each_call_are_always_seen(pool):
    """Each call captures new bytes, the last call's gone: its id may be the old one's."""
    def made(data, text):
        return lambda n: (data[n * 4096], text[n * 4096 : n * 4096 + 2])

    for round_ in range(12):
        data = os.urandom(1 << 20)
        text = data.hex()
        expected = {n: (data[n * 4096], text[n * 4096 : n * 4096 + 2]) for n in range(8)}
        assert pool.pmap(made(data, text), range(8)) == expected, round_
        del data, text


@pytest.mark.timeout(60)
def test_a_pool_lets_go_of_captured_bytes_when_shut_down():
    big = os.urandom(BYTES)
    alone = sys.getrefcount(big)
    with Pool("parallel", ncpu=2, progress=False) as pool:
        for _ in range(2):
            assert pool.pmap(lambda n: big[n], range(4)) == {n: big[n] for n in range(4)}
        assert sys.getrefcount(big) > alone
    assert sys.getrefcount(big) == alone


def _giving(data):
    return lambda: data  # a new function each time, with the same code


def test_a_read_only_array_over_bytes_is_known_by_where_it_lies_and_any_other_is_compared(monkeypatch):
    compares = _Compares(monkeypatch)
    shelf = Shelf()
    try:
        raw = os.urandom(BYTES + 64)
        frozen = numpy.frombuffer(raw, numpy.uint8)[64:]  # read-only, inside raw
        alone = sys.getrefcount(raw)
        first = shelf.publish(_giving(frozen), 2)
        compares.count = 0
        assert shelf.publish(_giving(frozen), 2).fid == first.fid and compares.count == 0
        assert shelf.holds(raw) is False  # a buffer's owner is not a captured object
        writable = numpy.zeros(BIG)
        view = writable.view()
        view.flags.writeable = False  # read-only, but its memory may change
        before = shelf.publish(_giving(view), 2)
        compares.count = 0
        assert shelf.publish(_giving(view), 2).fid == before.fid and compares.count >= 1
        writable[0] = 1.0
        changed = shelf.publish(_giving(view), 2)
        assert changed.fid != before.fid
        loader = Loader()
        loader.receive(first)
        loader.receive(changed)
        assert loader.get(changed.fid)()[0] == 1.0 and loader.get(first.fid)().tobytes() == raw[64:]
    finally:
        shelf.close()
    assert sys.getrefcount(raw) == alone  # let go


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_captured_bytes_and_str_reach_workers_whatever_their_start_method(start_method):
    data = os.urandom(BYTES)
    text = data.hex()
    with Pool("parallel", ncpu=2, start_method=start_method, progress=False) as pool:
        for _ in range(2):
            results = pool.pmap(lambda n: (data[n], text[n], type(data).__name__), range(6), chunksize=1)
            assert results == {n: (data[n], text[n], "bytes") for n in range(6)}
