"""ezpool._core.shipping and generic workers: code travels once, by name or by value, and is checked."""

from __future__ import annotations

import functools
import linecache
import logging
import os
import sys
import textwrap
import traceback
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from ezpool import BaseWorker, Pool, WorkerUnavailable
from ezpool._core.shipping import contents, fingerprint, ship, unpack
from tests import _helpers as h
from tests.conftest import free_port


def test_a_function_from_an_importable_module_travels_by_name_and_a_lambda_by_value():
    by_name, by_value = ship(h.square), ship(lambda x: x + 1)
    assert b"tests._helpers" in by_name.blob and len(by_name.blob) < len(by_value.blob)
    assert unpack(by_name.blob) is h.square and unpack(by_value.blob)(1) == 2
    assert ship(h.square).fid == by_name.fid and ship(h.add).fid != by_name.fid


def test_fingerprints_follow_the_code_not_the_name():
    def one(x):
        return x

    def two(x):
        return -x

    two.__qualname__ = one.__qualname__
    assert fingerprint(one) == fingerprint(one) and fingerprint(one) != fingerprint(two)
    assert fingerprint(h.CustomError) == fingerprint(h.CustomError)


def test_code_without_a_file_carries_its_source_lines(tmp_path):
    namespace: dict = {}
    source = "def broken(x):\n    raise ValueError('from a cell')\n"
    code = compile(source, "<cell-7>", "exec")
    import linecache

    linecache.cache["<cell-7>"] = (len(source), None, source.splitlines(True), "<cell-7>")
    exec(code, namespace)
    shipment = ship(namespace["broken"])
    del linecache.cache["<cell-7>"]
    fun = unpack(shipment.blob)
    with pytest.raises(ValueError) as caught:
        fun(1)
    assert "raise ValueError('from a cell')" in "".join(traceback.format_tb(caught.value.__traceback__))


def test_a_function_reaches_each_generic_worker_once_however_many_calls(serve, tmp_path):
    uris = serve("").uris + serve("").uris
    log = tmp_path / "loads"
    marker = h.CountsUnpickling(str(log))

    def plus_one(x, marker=marker):
        return x + 1

    with Pool() as pool:
        for _ in range(3):
            results = pool.dmap(plus_one, range(60), workers=uris, spawn=False)
            assert results == {n: n + 1 for n in range(60)}
        loads = log.read_text().split()
        assert 1 <= len(loads) <= 2 and len(set(loads)) == len(loads), loads  # once per worker at most
        pool.dmap(lambda x, marker=marker: x, range(10), workers=uris, spawn=False)
        assert len(log.read_text().split()) > len(loads)  # other code is sent anew


def test_a_module_the_workers_cannot_import_fails_every_task_saying_so_unless_shipped(
    serve, tmp_path, monkeypatch
):
    uris = serve("").uris  # started before the module exists on any path
    package = tmp_path / "mine"
    package.mkdir()
    (package / "lab.py").write_text("def scale(x):\n    return 10 * x\n")
    monkeypatch.syspath_prepend(str(package))
    import lab

    try:
        with Pool() as pool:
            failed = pool.dmap(lab.scale, [1, 2], workers=uris, spawn=False)
            assert list(failed.errors) == [1, 2] and isinstance(failed[1], ModuleNotFoundError)
            shipped = pool.dmap(lab.scale, [1, 2], workers=uris, spawn=False, ship_modules=["lab"])
            assert shipped == {1: 10, 2: 20}
    finally:
        sys.modules.pop("lab", None)


def test_a_version_mismatch_where_code_travels_is_refused_with_a_table(serve, core_child_env):
    env = dict(core_child_env, EZPOOL_TEST_FAULTS="python=3.0.1,cloudpickle=0.1.0")
    uris = serve("", env=env).uris
    with Pool() as pool, pytest.raises(WorkerUnavailable) as caught:
        pool.dmap(h.square, [1], workers=uris, spawn=False)
    message = str(caught.value)
    assert uris[0] in message and "client" in message and "worker" in message
    assert "3.0.1" in message and "0.1.0" in message and "Install the same" in message


def test_a_version_mismatch_with_a_pinned_worker_is_a_warning(serve, core_child_env, caplog):
    env = dict(core_child_env, EZPOOL_TEST_FAULTS="python=3.0.1")
    uris = serve("tests._helpers:square", env=env).uris
    with caplog.at_level(logging.WARNING, logger="ezpool"), Pool() as pool:
        assert pool.dmap(h.square, [3], workers=uris, spawn=False) == {3: 9}
    assert any("3.0.1" in r.message and uris[0] in r.message for r in caplog.records)


def test_a_pinned_worker_refuses_code_it_does_not_serve(serve):
    uris = serve("tests._helpers:square").uris
    with Pool() as pool, pytest.raises(WorkerUnavailable, match="serves 'square', not 'add'"):
        pool.dmap(h.add, [(1, 2)], workers=uris, spawn=False)


SCRIPT = textwrap.dedent(
    """
    import sys
    from ezpool import BaseWorker, Pool

    class Shout(BaseWorker):
        def setup(self):
            self.suffix = "!"

        def run(self, word):
            return word.upper() + self.suffix

    if __name__ == "__main__":
        with Pool(workers=[f"PYRO:worker@127.0.0.1:{sys.argv[1]}"], spawn=True) as pool:
            results = pool.dmap(Shout, ["a", "b"])
            also = pool.dmap(lambda x: x * 2, [4])
        print(results["a"], results["b"], also[4])
    """
)


def test_a_script_class_and_a_lambda_run_on_a_worker_the_pool_starts(tmp_path, core_child_env):
    import subprocess

    script = tmp_path / "shout.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(free_port())],
        capture_output=True, text=True, timeout=90, env=core_child_env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["A!", "B!", "8"]


# --- file-less code (notebook cells, imitated) carries its source lines ---


@pytest.fixture
def cells() -> Iterator[Callable[[str], dict[str, Any]]]:
    """``cell(source)`` runs ``source`` as a new notebook cell; the namespace all cells share."""
    namespace: dict[str, Any] = {"__name__": "__main__", "BaseWorker": BaseWorker}
    names: list[str] = []

    def cell(source: str) -> dict[str, Any]:
        name = f"/nonexistent/ipykernel_test/cell{len(names)}.py"
        names.append(name)
        lines = source.splitlines(keepends=True)
        linecache.cache[name] = (len(source), None, lines, name)
        exec(compile(source, name, "exec"), namespace)
        return namespace

    yield cell
    for name in names:
        linecache.cache.pop(name, None)


def shipped_sources(fun: Any) -> dict[str, list[str]]:
    _, sources, _ = contents(ship(fun).blob)
    return sources


def test_a_function_carries_its_cell(cells) -> None:
    space = cells("def half(x):\n    return x / 2\n")
    lines = ["def half(x):\n", "    return x / 2\n"]
    assert shipped_sources(space["half"]) == {"/nonexistent/ipykernel_test/cell0.py": lines}


def test_helpers_from_other_cells_travel_too(cells) -> None:
    cells("def check(x):\n    assert x >= 0\n    return x\n")
    cells("def scale(x):\n    return check(x) * 2\n")
    space = cells("def outer(x):\n    return [scale(y) for y in range(x)]\n")
    assert sorted(shipped_sources(space["outer"])) == [
        f"/nonexistent/ipykernel_test/cell{n}.py" for n in range(3)
    ]


def test_a_class_carries_its_bases_and_their_helpers(cells) -> None:
    cells("def check(x):\n    return x\n")
    cells("class Base(BaseWorker):\n    def run(self, x):\n        return check(x)\n")
    space = cells("class Child(Base):\n    def setup(self):\n        self.ready = True\n")
    assert sorted(shipped_sources(space["Child"])) == [
        f"/nonexistent/ipykernel_test/cell{n}.py" for n in range(3)
    ]


def test_closures_and_partials_carry_what_they_hold(cells) -> None:
    cells("def check(x):\n    return x\n")
    space = cells("def make():\n    helper = check\n    return lambda x: helper(x)\n")
    assert len(shipped_sources(space["make"]())) == 2
    assert len(shipped_sources(functools.partial(space["make"]()))) == 2


def test_unpacking_puts_the_lines_back(cells) -> None:
    space = cells("def boom(x):\n    raise ValueError(x)\n")
    blob = ship(space["boom"]).blob
    linecache.cache.pop("/nonexistent/ipykernel_test/cell0.py")
    unpack(blob)
    assert linecache.getline("/nonexistent/ipykernel_test/cell0.py", 2) == "    raise ValueError(x)\n"


def test_code_with_a_file_sends_no_lines() -> None:
    assert shipped_sources(shipped_sources) == {}


def test_the_id_follows_captured_arrays_and_the_pickle_is_made_only_when_asked_for() -> None:
    numpy = pytest.importorskip("numpy")
    big = numpy.zeros(1 << 16)

    def made():  # a new function each time, with the same code and data
        return lambda n: float(big[n])

    first, again = ship(made()), ship(made())
    assert first.fid == again.fid
    big[3] = 2.0  # changed in place
    changed = ship(made())
    assert changed.fid != first.fid
    assert unpack(changed.blob)(3) == 2.0 and changed.blob is changed.blob  # made once


# --- a pool's shipper: a warm call hashes only what is new -------------------------------------


class _Hashed:
    """The sizes of what ``shipping`` hashes, by ``hashlib.sha256`` calls and updates."""

    def __init__(self, monkeypatch) -> None:
        import hashlib

        from ezpool._core import shipping

        self.sizes: list[int] = []
        sizes = self.sizes

        class Counted:
            def __init__(self, data=b"") -> None:
                self._hash = hashlib.sha256()
                self.update(data)

            def update(self, data) -> None:
                sizes.append(memoryview(data).nbytes)
                self._hash.update(data)

            def digest(self) -> bytes:
                return self._hash.digest()

            def hexdigest(self) -> str:
                return self._hash.hexdigest()

        class Module:
            sha256 = Counted

        monkeypatch.setattr(shipping, "hashlib", Module)

    def big(self) -> list[int]:
        from ezpool._core.shipping import BIG

        return [size for size in self.sizes if size >= BIG]


def _reading(data: Any) -> Callable[[int], Any]:
    return lambda n: data[n]  # a new function each time, with the same code


def test_a_warm_shipment_compares_a_captured_array_and_hashes_it_only_when_it_changed(monkeypatch):
    numpy = pytest.importorskip("numpy")
    from ezpool._core.shipping import BIG, Shipper

    hashed = _Hashed(monkeypatch)
    shipper = Shipper()
    big = numpy.zeros(2 * BIG // 8)
    first = shipper.ship(_reading(big))
    assert hashed.big() == [big.nbytes]
    hashed.sizes.clear()
    again = shipper.ship(_reading(big))
    assert again.fid == first.fid and hashed.big() == []  # compared with the copy, not hashed
    big[-1] = 1.0
    changed = shipper.ship(_reading(big))
    assert changed.fid != first.fid and hashed.big() == [big.nbytes]
    assert unpack(changed.blob)(big.size - 1) == 1.0
    big[-1] = 0.0
    assert shipper.ship(_reading(big)).fid == first.fid
    assert first.fid == ship(_reading(numpy.zeros(2 * BIG // 8))).fid  # the id is the content's


def test_a_warm_shipment_knows_captured_bytes_and_str_by_identity(monkeypatch):
    from ezpool._core.shipping import BIG, Shipper

    hashed = _Hashed(monkeypatch)
    shipper = Shipper()
    data, text = os.urandom(BIG), "ü" * BIG
    first = shipper.ship(_reading((data, text)))
    assert sorted(hashed.big()) == sorted([len(data), len(text.encode())])
    hashed.sizes.clear()
    assert shipper.ship(_reading((data, text))).fid == first.fid and hashed.big() == []
    assert shipper.ship(_reading((bytes(bytearray(data)), text))).fid == first.fid  # equal content
    assert shipper.ship(_reading((data, text + "!"))).fid != first.fid
    fun = unpack(first.blob)
    assert fun(0) == data and type(fun(0)) is bytes and fun(1) == text


def test_fresh_bytes_in_each_shipment_get_their_own_id_even_where_ids_are_reused():
    from ezpool._core.shipping import BIG, Shipper

    shipper, fids = Shipper(), set()
    for _ in range(20):
        data = os.urandom(BIG)  # the last one is gone: the new one may get its id
        fids.add(shipper.ship(_reading(data)).fid)
        del data
    assert len(fids) == 20


def test_a_shipper_holds_what_its_recent_functions_capture_until_closed():
    from ezpool._core.shipping import BIG, KEPT, Shipper

    shipper, data = Shipper(), os.urandom(BIG)
    alone = sys.getrefcount(data)
    shipper.ship(_reading(data))
    assert shipper.holds(data) and sys.getrefcount(data) == alone + 1
    for n in range(KEPT):
        shipper.ship(lambda x, n=n: x + n)
    assert not shipper.holds(data) and sys.getrefcount(data) == alone
    shipper.ship(_reading(data))
    shipper.close()
    assert not shipper.holds(data) and sys.getrefcount(data) == alone
    ship(_reading(data))  # shipped once (the executor's code): nothing is kept
    assert sys.getrefcount(data) == alone


@pytest.mark.timeout(120)
def test_captured_data_changed_between_dmap_calls_is_seen(serve):
    numpy = pytest.importorskip("numpy")
    from ezpool._core.shipping import BIG

    uris = serve("").uris
    array = numpy.zeros(2 * BIG // 8)
    with Pool() as pool:
        for round_ in range(3):
            array[-1] = round_
            data = os.urandom(BIG)  # fresh bytes each call (the last ones' id may be reused)
            fun = _reading((array, data))
            results = pool.dmap(lambda n, fun=fun: (float(fun(0)[n - 1]), fun(1)[n]), range(4),
                                workers=uris, spawn=False)
            assert results == {n: (float(array[n - 1]), data[n]) for n in range(4)}, round_
            del data, fun
        data = os.urandom(BIG)
        alone = sys.getrefcount(data)
        pool.dmap(_reading(data), range(2), workers=uris, spawn=False)
        assert sys.getrefcount(data) > alone
    assert sys.getrefcount(data) == alone  # let go at shutdown


def test_a_worker_copies_captured_arrays_into_memory_of_their_own_as_writable_as_they_were():
    import mmap

    numpy = pytest.importorskip("numpy")
    from ezpool._core.shipping import BIG

    big, small, frozen = numpy.arange(BIG // 4, dtype=float), numpy.arange(8.0), numpy.arange(BIG // 4.0)
    frozen.flags.writeable = False
    strided = numpy.arange(BIG // 4, dtype=float)[::2]  # not contiguous: inside the pickle
    back = unpack(ship(lambda: (big, small, frozen, strided)).blob)()
    assert [array.flags.writeable for array in back] == [True, True, False, True]
    for sent, arrived in zip((big, small, frozen, strided), back):
        assert numpy.array_equal(sent, arrived)
    base = back[0]
    while isinstance(base, (numpy.ndarray, memoryview)):
        base = base.base if isinstance(base, numpy.ndarray) else base.obj
    assert isinstance(base, mmap.mmap)  # an anonymous mapping (huge pages where the system has them)


def test_a_read_only_array_over_bytes_is_hashed_once_and_any_other_is_compared(monkeypatch):
    numpy = pytest.importorskip("numpy")
    from ezpool._core.shipping import BIG, Shipper

    hashed = _Hashed(monkeypatch)
    shipper, raw = Shipper(), os.urandom(2 * BIG)
    frozen = numpy.frombuffer(raw, numpy.float64)
    alone = sys.getrefcount(raw)
    first = shipper.ship(_reading(frozen))
    hashed.sizes.clear()
    assert shipper.ship(_reading(frozen)).fid == first.fid and hashed.big() == []
    writable = numpy.zeros(2 * BIG // 8)
    view = writable.view()
    view.flags.writeable = False
    before = shipper.ship(_reading(view))
    writable[0] = 1.0
    assert shipper.ship(_reading(view)).fid != before.fid
    assert sys.getrefcount(raw) == alone + 1
    shipper.close()
    assert sys.getrefcount(raw) == alone
