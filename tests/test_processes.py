"""ezpool._backends.parallel.processes: starting worker processes, and the mark that names the task
a process is running, under every start method; what a cold start imports."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from functools import partial

import pytest

from ezpool import Pool, TaskTimeout, WorkerCrashed
from tests import _helpers as h

START_METHODS = [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


@pytest.fixture(params=START_METHODS)
def pool(request):
    pool = Pool("parallel", start_method=request.param, progress=False)
    try:
        yield pool
    finally:
        pool.shutdown()


def _marks_held() -> list[str]:
    """The descriptors of this process that are marks' memory files."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used, now closed
            continue
        if "ezpool-mark" in target:
            found.append(target)
    return found


@pytest.mark.timeout(90)
def test_a_crash_is_blamed_on_the_task_its_process_was_running(pool):
    # Six tasks a chunk: only the mark tells which of them killed the process.
    results = pool.pmap(partial(h.exit_on, 7), range(12), ncpu=2, chunksize=6, max_attempts=1)
    assert list(results.errors) == [7]
    assert isinstance(results[7], WorkerCrashed) and "task 7" in str(results[7])
    assert {t: v for t, v in results.items() if t != 7} == {t: t * 10 for t in range(12) if t != 7}


@pytest.mark.timeout(90)
def test_a_timeout_is_blamed_on_the_task_that_overran(pool):
    tasks = [0.01, 0.02, 30.0, 0.03, 0.04, 0.05]
    results = pool.pmap(h.nap, tasks, ncpu=2, chunksize=3, timeout=1.0)
    assert list(results.errors) == [30.0]
    assert isinstance(results[30.0], TaskTimeout)
    assert {t: results[t] for t in tasks if t != 30.0} == {t: t for t in tasks if t != 30.0}


@pytest.mark.timeout(90)
def test_a_task_longer_than_the_checks_on_the_caller_runs_to_its_end(pool):
    # A worker checks every half second that its caller lives; under forkserver its
    # parent is the server, not the caller, and that must not end it.
    assert pool.pmap(h.nap, [1.5, 0.01], ncpu=2, max_attempts=1) == {1.5: 1.5, 0.01: 0.01}


@pytest.mark.timeout(90)
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_the_caller_holds_a_mark_per_live_process_and_none_after_shutdown(pool):
    assert pool.pmap(h.square, range(8), ncpu=2) == {t: t * t for t in range(8)}
    assert len(_marks_held()) <= 2  # the mapping of each process's mark, no more
    pool.shutdown()
    assert _marks_held() == []


_COLD_SCRIPT = """
import json, sys
before = set(sys.modules)
from ezpool import Pool
imported = sorted(set(sys.modules) - before)
from tests._startup import loaded

UNUSED = ["cloudpickle", "ctypes", "hashlib", "logging", "traceback"]

if __name__ == "__main__":
    with Pool(progress=False, start_method=sys.argv[1]) as pool:
        results = pool.pmap(loaded, UNUSED, ncpu=1)
    print(json.dumps({
        "imported": imported,
        "caller": {name: name in sys.modules for name in UNUSED},
        "worker": dict(results),
    }))
"""


def _run_script(source: str, method: str, tmp_path, python: str, env: dict) -> dict:
    """Run ``source`` as a fresh script under ``method`` (warnings as errors); what it printed, as JSON."""
    script = tmp_path / "script.py"
    script.write_text(source)
    done = subprocess.run(
        [python, "-W", "error", str(script), method],
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
def test_a_cold_start_imports_only_what_it_needs(method, tmp_path, core_python, core_child_env):
    found = _run_script(_COLD_SCRIPT, method, tmp_path, core_python, core_child_env)
    heavy = ("ssl", "hashlib", "difflib", "multiprocessing", "cloudpickle", "Pyro4", "numpy")
    heavy += ("dataclasses", "inspect", "ast", "dis")  # a third of the import, once
    heavy += ("logging", "traceback", "linecache", "string")  # a quarter: see ezpool._core.logs
    assert [name for name in found["imported"] if name.split(".")[0] in heavy] == []
    # A function found by name travels by name: cloudpickle stays out of both sides,
    # the mark needs no ctypes, and a reference by name is its own fid (no hashlib).
    # A run that logs nothing and in which no task fails needs no logging or traceback.
    unused = {"cloudpickle": False, "ctypes": False, "hashlib": False, "logging": False, "traceback": False}
    assert found["caller"] == unused
    assert found["worker"] == unused


_MAIN_SCRIPT = """
import json, sys
from ezpool import Pool


def loaded(name):
    return name in sys.modules


def root(x):
    return math.sqrt(x)


def scaled(x):
    return x * FACTOR


if __name__ == "__main__":
    import math

    FACTOR = 3

    def inner(x):
        return x + 1

    with Pool(progress=False, start_method=sys.argv[1]) as pool:
        first = pool.pmap(loaded, ["cloudpickle"], ncpu=2)
        again = pool.pmap(loaded, ["cloudpickle"], ncpu=2)
        caller = "cloudpickle" in sys.modules
        rest = [pool.pmap(f, [4], ncpu=2)[4] for f in (root, scaled, inner, lambda x: -x)]
    worker = [first["cloudpickle"], again["cloudpickle"]]
    print(json.dumps({"worker": worker, "caller": caller, "rest": rest}))
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", START_METHODS)
def test_a_function_of_the_script_travels_by_name_where_the_workers_have_it(
    method, tmp_path, core_python, core_child_env
):
    # A plain function at the top of the script needs no cloudpickle on either side; one
    # the workers may lack (defined or reading a global set under __main__) still works.
    found = _run_script(_MAIN_SCRIPT, method, tmp_path, core_python, core_child_env)
    assert found == {"worker": [False, False], "caller": False, "rest": [2.0, 12, 5, -4]}


@pytest.mark.timeout(30)
def test_a_worker_process_module_does_not_load_the_pool_side():
    # What a spawned worker imports by itself (its script aside): not the Pool, its
    # options, results or progress bar; the public names still load on first use.
    probe = (
        "import sys, ezpool._backends.parallel.child\n"
        "pool_side = ('ezpool.pool', 'ezpool.options', 'ezpool.results', 'ezpool._core.progress')\n"
        "loaded = sorted(m for m in pool_side if m in sys.modules)\n"
        "import ezpool\n"
        "print(loaded, ezpool.Pool.__module__, 'Pool' in dir(ezpool))"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=25, check=True
    )
    assert found.stdout.split() == ["[]", "ezpool.pool", "True"]
