"""ezpool._core.relay: what tasks print and log on workers reaches the caller with capture_output=True.

The end-to-end tests run real worker processes: ``pmap`` with ``fork`` and
``spawn``, and ``dmap`` on a generic worker the pool starts itself (and, once, on
one started with ``python -m ezpool.serve``). The rest test the capture in this
process.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import threading
from array import array
from typing import Any, Callable

import pytest
import tqdm

from ezpool import Pool, Results, TaskTimeout
from ezpool._core.records import ChunkReply
from ezpool._worker.running import pack_chunk, run_chunk_captured
from ezpool.errors import IgnoredOptionWarning
from tests import _helpers as h
from tests.conftest import free_port

_POOLS: dict[str, Callable[[], Pool]] = {
    "fork": lambda: Pool("parallel", ncpu=2, start_method="fork", progress=False),
    "spawn": lambda: Pool("parallel", ncpu=2, start_method="spawn", progress=False),
    # A generic worker, started by the pool itself on a free local port.
    "distributed": lambda: Pool(
        "distributed", workers=[f"PYRO:worker@127.0.0.1:{free_port()}"], progress=False, spawn=True
    ),
}


@pytest.fixture(scope="module", params=list(_POOLS))
def pool(request):
    with _POOLS[request.param]() as pool:
        yield pool


def tag(results: Results, task: Any) -> str:
    """The tag in front of what ``task`` wrote: where it ran, and which task it was."""
    return f"[{results.workers[task]} task {task!r}]"


def chatty_records(caplog) -> dict[Any, list[logging.LogRecord]]:
    """The records ``h.chatty`` made on workers and the caller received, by task."""
    found: dict[Any, list[logging.LogRecord]] = {}
    for record in caplog.records:
        if record.name == "tests.chatty":
            found.setdefault(getattr(record, "ezpool_task", None), []).append(record)
    return found


# --- end to end ----------------------------------------------------------------------


def test_what_tasks_print_and_log_reaches_the_caller_tagged_with_worker_and_task(pool, capsys, caplog):
    results = pool.map(h.chatty, ["a", "b"], capture_output=True)
    assert results == {"a": "a", "b": "b"}
    out, err = capsys.readouterr()
    records = chatty_records(caplog)
    assert set(records) == {"a", "b"}
    for task in ("a", "b"):
        assert f"{tag(results, task)} out {task}\n" in out
        assert f"{tag(results, task)} err {task}\n" in err
        (record,) = records[task]  # the info record is below the caller's level (warning)
        assert record.levelno == logging.WARNING
        assert record.getMessage() == f"{tag(results, task)} warned {task}"
        assert record.ezpool_worker == results.workers[task]
        assert record.process != os.getpid() and record.funcName == "chatty"
    assert "out a" not in err and "err a" not in out


def test_records_are_kept_from_the_callers_root_level(pool, caplog):
    caplog.set_level(logging.INFO)
    results = pool.map(h.chatty, ["c"], capture_output=True)
    messages = [(r.levelno, r.getMessage()) for r in chatty_records(caplog)["c"]]
    assert messages == [
        (logging.INFO, f"{tag(results, 'c')} told c"),
        (logging.WARNING, f"{tag(results, 'c')} warned c"),
    ]


def test_without_capture_output_nothing_arrives(pool, capsys, caplog):
    assert pool.map(h.chatty, ["d"]) == {"d": "d"}
    out, err = capsys.readouterr()
    assert "out d" not in out + err and "err d" not in out + err
    assert chatty_records(caplog) == {}


def test_what_a_failing_task_wrote_still_arrives(pool, capsys, caplog):
    results = pool.map(h.chatty, ["bad", "e"], capture_output=True)
    assert isinstance(results["bad"], ValueError) and results["e"] == "e"
    out, err = capsys.readouterr()
    assert f"{tag(results, 'bad')} out bad\n" in out and f"{tag(results, 'bad')} err bad\n" in err
    assert [r.getMessage() for r in chatty_records(caplog)["bad"]] == [f"{tag(results, 'bad')} warned bad"]


def test_a_progress_bar_and_the_lines_share_the_terminal(pool, capsys, caplog, monkeypatch):
    written: list[str] = []
    original = tqdm.tqdm.write.__func__  # type: ignore[attr-defined]

    def spy(cls, s, file=None, end="\n", nolock=False):
        written.append(s)
        return original(cls, s, file=file, end=end, nolock=nolock)

    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(spy))
    console = logging.StreamHandler(sys.stderr)  # a handler of the user's own, on the console
    console.setFormatter(logging.Formatter("console: %(message)s"))
    logging.getLogger().addHandler(console)
    try:
        results = pool.map(h.chatty, ["f", "g"], capture_output=True, progress=True, msg="Chatting")
    finally:
        logging.getLogger().removeHandler(console)
    out, err = capsys.readouterr()
    assert "Chatting" in err and "2/2" in err
    for task in ("f", "g"):
        assert f"{tag(results, task)} out {task}\n" in written
        assert f"{tag(results, task)} err {task}\n" in written
        assert f"console: {tag(results, task)} warned {task}" in written, "the log line tore the bar"
        assert f"{tag(results, task)} out {task}\n" in out
        assert f"console: {tag(results, task)} warned {task}" in err
    assert set(chatty_records(caplog)) == {"f", "g"}


def test_a_worker_started_with_serve_sends_output_back_and_keeps_it_for_tasks_that_ran(serve, capsys):
    (uri,) = serve("").uris
    with Pool("distributed", workers=[uri], progress=False, capture_output=True) as pool:
        results = pool.dmap(h.chatty, [("quick", 0.0), ("slow", 30.0)], chunksize=2, timeout=1.0)
    assert results[("quick", 0.0)] == "quick" and isinstance(results[("slow", 30.0)], TaskTimeout)
    out, _ = capsys.readouterr()
    assert f"{tag(results, ('quick', 0.0))} out quick\n" in out
    assert "out slow" not in out, "the task that overran printed nothing before it was stopped"


def test_the_serial_mode_ignores_the_option_its_tasks_write_here(capsys):
    ignored = "smap runs the 'serial' mode, which ignores capture_output=True"
    with Pool() as pool, pytest.warns(IgnoredOptionWarning, match=ignored):
        assert pool.smap(h.chatty, ["h"], capture_output=True) == {"h": "h"}
    out, err = capsys.readouterr()
    assert out == "out h\n" and err == "err h\n"


# --- in this process -----------------------------------------------------------------


def _steps(task: int) -> int:
    if task:
        print("one")
        print("two", file=sys.stderr)
        logging.getLogger("tests.steps").error("three %d", task)
        sys.stdout.write("four")
        sys.stdout.write("five")
    return task


def test_a_chunk_keeps_each_tasks_writes_and_records_in_order():
    outputs: dict[int, Any] = {}
    values, times, failures = run_chunk_captured(_steps, [7, 0], 10, [0], logging.WARNING, outputs)
    assert values == [7, 0] and len(times) == 2 and failures == {}
    assert list(outputs) == [0], "a task that wrote nothing is left out"
    (stdout, stderr, (kind, fields), last) = outputs[0]
    assert (stdout, stderr, last) == (("stdout", "one\n"), ("stderr", "two\n"), ("stdout", "fourfive"))
    assert kind == "log" and fields["msg"] == "three 7" and fields["levelno"] == logging.ERROR
    assert fields["name"] == "tests.steps" and fields["funcName"] == "_steps"
    pickle.dumps(outputs)


def test_records_below_the_level_are_not_kept():
    outputs: dict[int, Any] = {}
    run_chunk_captured(_steps, [1], 0, [0], logging.CRITICAL, outputs)
    assert [kind for kind, _ in outputs[0]] == ["stdout", "stderr", "stdout"]


def test_a_logged_exception_keeps_its_traceback():
    def oops(task: int) -> None:
        try:
            raise KeyError(task)
        except KeyError:
            logging.getLogger("tests.oops").exception("caught")

    outputs: dict[int, Any] = {}
    run_chunk_captured(oops, [3], 0, [0], logging.WARNING, outputs)
    ((_, fields),) = outputs[0]
    assert fields["msg"] == "caught" and "KeyError: 3" in fields["exc_text"]


def test_other_threads_are_not_captured_and_everything_is_put_back(capsys, caplog):
    root = logging.getLogger()
    before = (sys.stdout, sys.stderr, list(root.handlers), root.level)

    def task(_: int) -> None:
        def elsewhere() -> None:
            print("from another thread")
            logging.getLogger("tests.other").warning("another thread warns")

        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        print("from the task")

    outputs: dict[int, Any] = {}
    run_chunk_captured(task, [0], 0, [0], logging.DEBUG, outputs)
    assert outputs == {0: [("stdout", "from the task\n")]}
    assert (sys.stdout, sys.stderr, list(root.handlers), root.level) == before
    out, _ = capsys.readouterr()
    assert out == "from another thread\n"
    assert [r.getMessage() for r in caplog.records if r.name == "tests.other"] == ["another thread warns"]
    assert not [r for r in caplog.records if r.levelno < logging.WARNING], "the lowered level leaked"


def test_a_reply_grows_a_fifth_element_only_when_tasks_wrote_something():
    outcome = ([1], array("d", [0.5]), {})
    assert len(pickle.loads(pack_chunk(3, outcome))) == 4
    assert len(pickle.loads(pack_chunk(3, outcome, {}))) == 4
    assert ChunkReply.decode(pack_chunk(3, outcome)) == (3, [1], array("d", [0.5]), {}, None)
    written = {0: [("stdout", "hi\n")]}
    assert len(pickle.loads(pack_chunk(3, outcome, written))) == 5
    assert ChunkReply.decode(pack_chunk(3, outcome, written)) == (3, [1], array("d", [0.5]), {}, written)
