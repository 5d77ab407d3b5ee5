"""The one warning at the end of a map call whose tasks failed (``ezpool._core.summary``).

A failing task does not raise; the call says once, on the ``ezpool.failures`` logger, how
many tasks failed and with what, in every mode, and nothing when none failed, for
``imap``, for a call stopped by Ctrl-C, or when the user turned it off.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import textwrap
import time

import pytest

from ezpool import Pool, RemoteError
from ezpool._core.summary import FAILURES_LOGGER, summary
from tests import _helpers as h
from tests.conftest import free_port

ODD = "15 of 30 tasks failed: ValueError x15 (odd task 1); see results.errors"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == FAILURES_LOGGER]


@pytest.mark.timeout(120)
def test_a_call_with_failures_ends_with_one_warning_in_every_mode(mode_pool, caplog):
    with caplog.at_level(logging.WARNING, logger=FAILURES_LOGGER):
        results = mode_pool.map(h.fail_on_odd, range(30))
    assert len(results.errors) == 15
    assert _warnings(caplog) == [ODD]
    levels = [record.levelno for record in caplog.records if record.name == FAILURES_LOGGER]
    assert levels == [logging.WARNING]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("notes", [True, False], ids=["add_note", "before 3.11"])
def test_tuple_tasks_spread_into_arguments_that_do_not_fit_are_said_so(mode_pool, caplog, monkeypatch, notes):
    from ezpool._core import task_errors

    monkeypatch.setattr(task_errors, "_NOTES", notes and task_errors._NOTES)
    with caplog.at_level(logging.WARNING, logger=FAILURES_LOGGER):
        mode_pool.map(h.square, [(1, 2), (3, 4)])
    assert _warnings(caplog) == [
        "2 of 2 tasks failed: TypeError x2 (square() takes 1 positional argument but 2 were given; the "
        "tuple tasks were spread into arguments: see its note); see results.errors"
    ]


@pytest.mark.timeout(120)
def test_a_call_without_failures_and_imap_say_nothing(mode_pool, caplog):
    with caplog.at_level(logging.DEBUG, logger=FAILURES_LOGGER):
        assert not mode_pool.map(h.square, range(30)).errors
        outcomes = list(mode_pool.imap(h.fail_on_odd, range(30)))
    assert sum(outcome.failed for outcome in outcomes) == 15
    assert _warnings(caplog) == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["smap", "tmap", "pmap", "amap"])
def test_each_map_method_warns(method, caplog):
    with Pool(progress=False) as pool, caplog.at_level(logging.WARNING, logger=FAILURES_LOGGER):
        if method == "amap":
            results = asyncio.run(pool.amap(h.fail_on_odd, range(30)))
        elif method == "pmap":
            results = pool.pmap(h.fail_on_odd, range(30), ncpu=2)
        else:
            results = getattr(pool, method)(h.fail_on_odd, range(30))
    assert len(results.errors) == 15
    assert _warnings(caplog) == [ODD]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["level", "disabled", "parent"])
def test_the_warning_is_turned_off_through_logging(how, caplog):
    name = "ezpool" if how == "parent" else FAILURES_LOGGER
    target = logging.getLogger(name)
    saved = target.level, target.disabled
    try:
        if how == "disabled":
            target.disabled = True
        else:
            target.setLevel(logging.ERROR)
        with Pool(progress=False) as pool:
            results = pool.smap(h.fail_on_odd, range(30))
    finally:
        target.setLevel(saved[0])
        target.disabled = saved[1]
    assert len(results.errors) == 15
    assert _warnings(caplog) == []


def _interrupt_on_5(n: int) -> int:
    if n == 5:
        raise KeyboardInterrupt
    time.sleep(0.03)  # so that the outcomes before it are reported (every 0.05 s) before it
    return h.fail_on_odd(n)


@pytest.mark.timeout(60)
def test_a_call_stopped_by_ctrl_c_says_nothing(caplog):
    with Pool(progress=False) as pool, pytest.raises(KeyboardInterrupt) as stopped:
        pool.smap(_interrupt_on_5, range(30))
    assert stopped.value.results.errors  # tasks failed before the interrupt
    assert _warnings(caplog) == []


@pytest.mark.timeout(60)
def test_outcomes_read_from_a_store_are_counted_and_said_so(tmp_path, caplog):
    store = tmp_path / "sweep.sqlite"
    with Pool(progress=False, store=store) as pool:
        pool.smap(h.fail_on_odd, range(10))
        caplog.clear()
        results = pool.smap(h.fail_on_odd, range(12))
    assert len(results.errors) == 6
    assert _warnings(caplog) == [
        "6 of 12 tasks failed (5 of them read from the store): ValueError x6 (odd task 1); see results.errors"
    ]


def test_types_are_grouped_the_most_frequent_first_each_with_its_first_message():
    errors = [KeyError("a"), ValueError("bad 1"), ValueError("bad 2"), KeyError("b"), ValueError("bad 3"),
              OSError("disk\nfull"), ZeroDivisionError("division by zero"), RuntimeError("x" * 300),
              RemoteError("mymodule.Custom", "not rebuilt here")]
    text = summary(errors, 40)
    assert text == (
        "9 of 40 tasks failed: ValueError x3 (bad 1), KeyError x2 ('a'), OSError x1 (disk), "
        "and 3 more types; see results.errors"
    )
    assert summary([RemoteError("mymodule.Custom", "not rebuilt here")], 1) == (
        "1 of 1 tasks failed: Custom x1 (not rebuilt here); see results.errors"
    )
    long = summary([RuntimeError("x" * 300), SystemExit()], 2)
    assert long == f"2 of 2 tasks failed: RuntimeError x1 ({'x' * 97}...), SystemExit x1; see results.errors"
    four = summary([*errors[:4], OSError("o"), ZeroDivisionError()], 6)
    assert four.endswith("and 1 more type; see results.errors")


_TRAP = '''
    import sys
    from ezpool import Pool, BaseWorker

    class FibWorker(BaseWorker):
        def run(self, n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)  # no fib where the worker runs

    if __name__ == "__main__":
        workers = sys.argv[1:]
        with Pool(progress=False) as pool:
            results = pool.dmap(FibWorker, range(30), workers=workers, spawn=True)
        print(len(results.errors), "errors")
'''


@pytest.mark.timeout(120)
def test_the_tutorials_trap_says_what_failed_on_standard_error(tmp_path, core_child_env, core_python):
    """The tutorial's distributed program with a worker missing a name: a real run, as a user's."""
    script = tmp_path / "fib_trap.py"
    script.write_text(textwrap.dedent(_TRAP))
    workers = [f"PYRO:worker@127.0.0.1:{free_port()}" for _ in range(2)]
    done = subprocess.run([core_python, str(script), *workers], capture_output=True, text=True,
                          env=core_child_env, timeout=100, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "28 errors\n"
    lines = done.stderr.splitlines()
    assert "28 of 30 tasks failed: NameError x28 (name 'fib' is not defined); see results.errors" in lines
    assert sum("tasks failed" in line for line in lines) == 1

