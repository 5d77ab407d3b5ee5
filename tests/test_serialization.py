"""ezpool._core.serialization: what crosses a process boundary, and what happens when it cannot."""

from __future__ import annotations

import pickle
import threading
import traceback

import pytest

from ezpool import RemoteError, RemoteTraceback, ResultNotSerializable
from ezpool._core.serialization import (
    ExceptionRecord,
    dumps,
    dumps_function,
    dumps_tasks,
    loads,
    rebuild,
    record_exception,
    safe_values,
)
from tests import _helpers as h


def _raised(fun, *args) -> BaseException:
    try:
        fun(*args)
    except Exception as exc:
        return exc
    raise AssertionError("it did not raise")


def test_capture_and_rebuild_give_back_the_class_message_and_traceback():
    record = record_exception(_raised(h.raise_custom, "boom"))
    assert isinstance(record, ExceptionRecord)
    assert record.type_name == "tests._helpers.CustomError" and record.message == "boom"
    assert "_helpers.py" in record.traceback_text and "raise_custom" in record.traceback_text
    rebuilt = rebuild(pickle.loads(pickle.dumps(record)))  # a record travels as itself
    assert type(rebuilt) is h.CustomError and rebuilt.args == ("boom",)
    assert isinstance(rebuilt.__cause__, RemoteTraceback)
    assert rebuilt.__cause__.traceback_text == record.traceback_text
    printed = "".join(traceback.format_exception(type(rebuilt), rebuilt, rebuilt.__traceback__))
    assert "_helpers.py" in printed and "boom" in printed


def test_a_builtin_exception_keeps_its_plain_name():
    record = record_exception(_raised(int, "x"))
    assert record.type_name == "ValueError"
    assert type(rebuild(record)) is ValueError


@pytest.mark.parametrize(
    ("fun", "type_name", "has_blob"),
    [
        (h.raise_unpicklable, "tests._helpers.UnpicklableError", False),
        (h.raise_unrebuildable, "tests._helpers.UnrebuildableError", True),
    ],
)
def test_an_exception_that_cannot_be_rebuilt_becomes_remote_error(fun, type_name, has_blob):
    record = record_exception(_raised(fun, "lost"))
    assert (record.blob is not None) is has_blob
    rebuilt = rebuild(record)
    assert type(rebuilt) is RemoteError
    assert rebuilt.type_name == type_name and rebuilt.message == "lost"
    assert str(rebuilt) == f"{type_name}: lost"
    assert fun.__name__ in rebuilt.traceback_text
    assert isinstance(rebuilt.__cause__, RemoteTraceback)
    copy = pickle.loads(pickle.dumps(rebuilt))  # a RemoteError can travel on
    assert (copy.type_name, copy.message, copy.traceback_text) == (
        rebuilt.type_name,
        rebuilt.message,
        rebuilt.traceback_text,
    )


def test_a_record_whose_blob_is_not_an_exception_becomes_remote_error():
    record = ExceptionRecord(pickle.dumps("not an exception"), "Strange", "odd", "tb")
    assert isinstance(rebuild(record), RemoteError)


def test_dumps_uses_pickle_and_falls_back_to_cloudpickle():
    assert loads(dumps([1, "a", (2,)])) == [1, "a", (2,)]
    assert loads(dumps(h.square)) is h.square  # by reference when pickle can
    offset = 5
    lam = lambda x: x + offset  # noqa: E731 - the point is a lambda
    assert loads(dumps(lam))(1) == 6


def test_dumps_function_sends_lambdas_and_closures_and_names_what_it_cannot():
    assert loads(dumps_function(lambda x: x * 2))(4) == 8
    lock = threading.Lock()

    def guarded(x):
        with lock:
            return x

    with pytest.raises(TypeError, match=r"cannot send .*guarded"):
        dumps_function(guarded)


def test_dumps_tasks_names_the_task_that_cannot_be_sent():
    lock = threading.Lock()
    bad = (3, lock)
    with pytest.raises(TypeError, match="cannot send task") as info:
        dumps_tasks([1, 2, bad, 4])
    assert repr(bad) in str(info.value)
    assert loads(b"".join(dumps_tasks([1, (2, "x")]))) == [1, (2, "x")]


def test_safe_values_replaces_only_what_cannot_be_pickled():
    earlier = record_exception(ValueError("earlier"))
    values = [1, threading.Lock(), "three", None]
    failures = {3: earlier}
    safe_values(values, failures)
    assert values[0] == 1 and values[2] == "three" and values[1] is None
    assert set(failures) == {1, 3} and failures[3] is earlier
    error = rebuild(failures[1])
    assert type(error) is ResultNotSerializable and isinstance(error, TypeError)
    assert "lock" in str(error)
    pickle.dumps(values)  # now it travels


def test_capture_survives_an_exception_whose_str_fails():
    record = record_exception(_raised(h.raise_bad_str, 5))
    assert record.type_name == "tests._helpers.BadStrError"
    assert "BadStrError" in record.message and "raise_bad_str" in record.traceback_text
    rebuilt = rebuild(record)
    assert type(rebuilt) is h.BadStrError and rebuilt.args == (5,)
    unpicklable = record_exception(_raised(h.raise_unpicklable, "x"))._replace(message="m")
    assert str(rebuild(unpicklable)) == "tests._helpers.UnpicklableError: m"


class _Opaque:
    """Neither printable nor picklable."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_safe_values_names_a_value_it_cannot_even_print():
    values = [_Opaque()]
    failures: dict = {}
    safe_values(values, failures)
    error = rebuild(failures[0])
    assert type(error) is ResultNotSerializable and "<_Opaque object>" in str(error)


def test_pickled_parts_keep_big_bytes_by_reference_and_copy_what_may_change():
    import pickle

    from ezpool._core.serialization import dumps_parts

    big = bytes(range(256)) * 4096  # 1 MB
    changing = bytearray(big)
    parts = dumps_parts([big, changing, 3])
    assert any(part is big for part in parts)
    assert all(part is not changing and type(part) is bytes for part in parts)
    changing[0] = 9  # what was pickled does not change with it
    assert pickle.loads(b"".join(parts)) == [big, bytearray(big), 3]
    assert dumps_parts([1, 2]) == (pickle.dumps([1, 2], pickle.HIGHEST_PROTOCOL),)


@pytest.mark.timeout(60)
def test_every_ezpool_error_survives_tblibs_pickler():
    # dask.distributed installs tblib's pickler for every exception class defined when it is
    # imported; it rebuilds with cls.__new__, which MemoryError refused for WorkerOutOfMemory.
    # (In a subprocess: the install is global.)
    pytest.importorskip("tblib", reason="tblib (a dask.distributed dependency) is not installed")
    import subprocess
    import sys

    script = (
        "import pickle, ezpool.errors as errors\n"
        "from tblib import pickling_support\n"
        "pickling_support.install()\n"
        "for name in errors.__all__:\n"
        "    kind = getattr(errors, name)\n"
        "    try:\n"
        "        made = kind('what went wrong')\n"
        "    except TypeError:  # needs more than a message (RemoteError): made only by EzPool\n"
        "        continue\n"
        "    back = pickle.loads(pickle.dumps(made))\n"
        "    assert type(back) is kind and str(back) == str(made), name\n"
        "print('ok', len(errors.__all__))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


# --- ezpool._core.immutables: big bytes and str set aside from a function's pickle ---------------


def test_big_bytes_and_str_are_set_aside_once_each_and_put_back_where_they_were():
    from ezpool._core import immutables

    big, text, small = bytes(range(256)) * 64, "ünïcode\ud800" * 2000, b"small"
    held = {"a": (big, text, small), "b": [big, text]}
    blob, aside = immutables.dumps(lambda: held, 10_000)
    assert aside == [big, text] or aside == [text, big]
    assert big not in blob and len(blob) < 2000 and small in blob
    kinds = {id(big): immutables.BYTES, id(text): immutables.STR}
    given = [immutables.from_bytes(kinds[id(obj)], immutables.as_bytes(obj)) for obj in aside]
    asked = []

    def rebuild(kind, number):
        asked.append((kind, number))
        return given[number]

    back = immutables.loads(blob, rebuild)()
    assert back == held and type(back["a"][0]) is bytes and type(back["a"][1]) is str
    assert back["a"][0] is back["b"][0]  # one object, as it was
    assert set(asked) == {(kinds[id(obj)], n) for n, obj in enumerate(aside)}


class _Bytes(bytes):
    pass


def test_small_objects_stay_in_the_pickle_and_a_subclass_comes_back_as_itself():
    from ezpool._core import immutables

    held = (_Bytes(b"x" * 50_000), b"y" * 100, "z" * 100)
    blob, aside = immutables.dumps(lambda: held, 10_000)
    assert aside == [b"x" * 50_000] and b"y" * 100 in blob  # the subclass's content only
    back = immutables.loads(blob, lambda kind, n: aside[n])()
    assert back == held and type(back[0]) is _Bytes


def test_a_segment_is_read_whole_into_one_bytes_object(tmp_path):
    import os

    from ezpool._core import immutables

    data = os.urandom(1 << 20)
    path = tmp_path / "data"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert immutables.read_whole(fd, len(data)) == data
        assert immutables.read_whole(fd, 10) == data[:10]
        with pytest.raises(EOFError):
            immutables.read_whole(fd, len(data) + 1)
    finally:
        os.close(fd)
