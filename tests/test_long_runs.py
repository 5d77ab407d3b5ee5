"""Long runs: a store that keeps every outcome, resumes a sweep, and survives SIGKILL and Ctrl-C."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import pytest

from ezpool import Pool, ResultNotSerializable, StoreMismatch, open_store
from tests import _helpers as h
from tests.conftest import REPO_ROOT, eventually


def test_a_second_run_returns_the_stored_outcomes_and_runs_nothing(local_pool, tmp_path):
    store, calls = tmp_path / "sweep.sqlite", tmp_path / "calls"
    calls.mkdir()
    fun = partial(h.record_call, str(calls))
    first = local_pool.map(fun, range(20), store=store)
    assert sum(h.calls(calls).values()) == 20
    again = local_pool.map(fun, range(20), store=store)
    assert sum(h.calls(calls).values()) == 20, "the second run computed tasks again"
    assert again == first and list(again) == list(range(20))
    assert set(again.elapsed) == set(range(20)) and set(again.workers) == set(range(20))


def test_only_the_missing_tasks_run_and_the_order_is_the_call_s(local_pool, tmp_path):
    store, calls = tmp_path / "sweep.sqlite", tmp_path / "calls"
    calls.mkdir()
    fun = partial(h.record_call, str(calls))
    local_pool.map(fun, [3, 5, 7], store=store)
    results = local_pool.map(fun, [9, 7, 1, 5, 3, 2], store=store)
    assert list(results) == [9, 7, 1, 5, 3, 2] and results == {t: t for t in results}
    assert h.calls(calls) == {repr(t): 1 for t in (1, 2, 3, 5, 7, 9)}


def test_failures_are_stored_and_retry_failed_runs_them_again(local_pool, tmp_path):
    store, calls = tmp_path / "sweep.sqlite", tmp_path / "calls"
    calls.mkdir()
    first = local_pool.map(h.fail_on_odd, range(6), store=store)
    assert set(first.errors) == {1, 3, 5}
    again = local_pool.map(h.fail_on_odd, range(6), store=store)
    assert set(again.errors) == {1, 3, 5} and isinstance(again[3], ValueError)
    assert "odd" in str(again[3]) or str(first[3]) == str(again[3])
    retried = local_pool.map(h.fail_on_odd, range(6), store=store, retry_failed=True)
    assert set(retried.errors) == {1, 3, 5}
    assert open_store(store).errors.keys() == {1, 3, 5}


def test_a_changed_function_is_refused_before_any_work(tmp_path):
    store = tmp_path / "sweep.sqlite"
    with Pool(progress=False) as pool:
        pool.map(partial(h.add, 1), [1, 2], store=store)
        with pytest.raises(StoreMismatch, match="captures changed"):
            pool.map(partial(h.add, 2), [1, 2], store=store)
        assert pool.map(partial(h.add, 2), [1, 2], store=store, store_key="plus two") == {1: 3, 2: 4}
        assert pool.map(partial(h.add, 1), [1, 2], store=store) == {1: 2, 2: 3}


def test_a_value_that_cannot_be_stored_is_stored_as_its_error(tmp_path):
    store = tmp_path / "sweep.sqlite"
    with Pool(progress=False) as pool:
        results = pool.smap(h.lock_on, [(1, 1), (1, 2)], store=store)
        assert not results.errors  # this run has the values themselves
        again = pool.smap(h.lock_on, [(1, 1), (1, 2)], store=store)
    assert isinstance(again[(1, 1)], ResultNotSerializable) and again[(1, 2)] == 20


def test_imap_with_a_store_yields_stored_outcomes_without_running_them(local_pool, tmp_path):
    store, calls = tmp_path / "sweep.sqlite", tmp_path / "calls"
    calls.mkdir()
    fun = partial(h.record_call, str(calls))
    list(local_pool.imap(fun, iter(range(0, 30, 2)), store=store))
    outcomes = list(local_pool.imap(fun, iter(range(30)), store=store, ordered=True))
    assert [outcome.task for outcome in outcomes] == list(range(30))
    assert all(outcome.value == outcome.task for outcome in outcomes)
    assert h.calls(calls) == {repr(t): 1 for t in range(30)}


def test_the_store_can_be_read_while_a_sweep_writes_it(tmp_path):
    store = tmp_path / "sweep.sqlite"
    with Pool("parallel", ncpu=2, progress=False) as pool:
        stream = pool.imap(h.nap, iter([0.05] * 4 + [0.4] * 2 + [float(n) / 1000 for n in range(40)]),
                           store=store, chunksize=1)
        first = next(stream)
        eventually(lambda: len(open_store(store)) >= 1, "an outcome committed while the sweep runs")
        rest = list(stream)
    assert len(rest) == 45  # a repeated task is run (and yielded) each time it comes
    assert first.task in open_store(store) and len(open_store(store)) == 42


# --- a real calling process, killed -------------------------------------------------------------

EXAMPLE = REPO_ROOT / "examples" / "resumable_sweep.py"


def _sweep(tmp_path, core_child_env, *extra):
    command = [sys.executable, str(EXAMPLE), "--store", str(tmp_path / "sweep.sqlite"),
               "--mode", "parallel", "--ncpu", "2", "--seeds", "30", "--samples", "1000", "0", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=core_child_env, start_new_session=True)


def _committed(path: Path) -> int:
    """Outcomes another process can see now: only what was committed."""
    try:
        return len(open_store(path))
    except (FileNotFoundError, sqlite3.Error, Exception):
        return 0


def test_sigkill_loses_nothing_committed_and_a_rerun_resumes(tmp_path, core_child_env):
    store = tmp_path / "sweep.sqlite"
    process = _sweep(tmp_path, core_child_env, "--nap", "0.05")
    try:
        eventually(lambda: _committed(store) >= 10, "ten outcomes committed", timeout=60)
        seen = _committed(store)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=10)
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert _committed(store) >= seen
    rerun = _sweep(tmp_path, core_child_env, "--nap", "0.05")
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    resumed = int(out.split("resuming: ")[1].split()[0])
    assert resumed >= seen
    final = open_store(store)
    assert len(final) == 60 and len(final.errors) == 30


def test_ctrl_c_keeps_finished_outcomes_in_the_store_and_on_the_exception(tmp_path, core_child_env):
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # even if pytest runs with it ignored\n"
        "from ezpool import Pool\n"
        "def slow(n):\n"
        "    time.sleep(0.02 if n < 10 else 30)\n"
        "    return n\n"
        "if __name__ == '__main__':\n"
        "    with Pool('parallel', ncpu=2, progress=False) as pool:\n"
        "        try:\n"
        "            pool.map(slow, range(12), store=sys.argv[1], chunksize=1)\n"
        "        except KeyboardInterrupt as exc:\n"
        "            print('partial', sorted(exc.results), flush=True)\n"
    )
    store = tmp_path / "sweep.sqlite"
    process = subprocess.Popen([sys.executable, str(script), str(store)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=core_child_env, start_new_session=True)
    try:
        eventually(lambda: _committed(store) >= 10, "the ten quick tasks committed", timeout=60)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=10)
    assert "partial [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]" in out, err
    assert sorted(open_store(store)) == list(range(10))


def test_open_store_and_the_cli_show_where_a_sweep_stands(tmp_path, core_child_env):
    store = tmp_path / "sweep.sqlite"
    with Pool(progress=False) as pool:
        pool.map(h.fail_on_odd, range(8), store=store)
    results = open_store(store)
    assert len(results) == 8 and set(results.errors) == {1, 3, 5, 7}
    done = subprocess.run([sys.executable, "-m", "ezpool.store", str(store)], capture_output=True, text=True,
                          env=core_child_env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "8" in done.stdout and "4" in done.stdout and "fail_on_odd" in done.stdout


def test_threads_do_not_matter_to_a_store_opened_per_call(tmp_path):
    store = tmp_path / "sweep.sqlite"
    errors: list[BaseException] = []

    def run(offset: int) -> None:
        try:
            with Pool(progress=False) as pool:
                pool.map(h.square, range(offset, offset + 50), store=store)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n * 25,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert open_store(store) == {n: n * n for n in range(125)}
