"""The "ezpool" joblib backend (``ezpool.joblib``): joblib's ``Parallel`` on an EzPool pool.

Most tests run once per mode through ``ezpool_config``, a ``parallel_config`` that
selects the backend: ``serial``, ``parallel`` with the ``fork`` and the ``spawn``
start method, and ``distributed`` on two generic workers the pool starts itself on
free local ports. The pools the backend keeps between calls (``kept_pools``) are
shut down after each test, which then checks that no process of theirs is left.
joblib's own test suite runs on the backend in the ``joblib`` nox session
(``tests/joblib_plugin.py``), scikit-learn's ``n_jobs`` tests in the ``sklearn`` one
(``tests/sklearn_plugin.py``).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import joblib
import pytest
from joblib import Parallel, delayed, parallel_config

from ezpool import RemoteTraceback, TaskTimeout, WorkerCrashed
from ezpool._backends.parallel.backend import available_cpus
from ezpool.joblib import EzPoolBackend, kept_pools  # registers "ezpool" with joblib
from tests import _helpers as h
from tests.conftest import eventually
from tests.modes import MODES, Mode

pytestmark = pytest.mark.timeout(120)


def _selecting(name: str) -> dict[str, Any]:
    """The backend keyword arguments that select the mode of that name (``tests/modes.py``)."""
    return {"mode": MODES[name].kind, **MODES[name].options()}


@pytest.fixture
def ezpool_config(mode: Mode) -> Callable[..., Any]:
    """``ezpool_config(**more)``: a ``parallel_config`` of the "ezpool" backend in this mode."""
    kwargs = _selecting(mode.name)

    def config(**more: Any) -> Any:
        return parallel_config(backend="ezpool", **{**kwargs, **more})

    config.mode = mode.name  # type: ignore[attr-defined]
    return config


def _no_ezpool_processes() -> bool:
    return not [p for p in multiprocessing.active_children() if p.name == "ezpool-worker"]


def _served_children() -> list[int]:
    """The pids of this process's children that run ``ezpool.serve`` (the workers a
    distributed pool started), read from ``/proc``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if parent == os.getpid() and b"ezpool.serve" in command:
            found.append(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def _kept_pools_stop_with_the_test() -> Iterator[None]:
    """Each test starts with no kept pool, and leaves no process of one behind (the
    processes of a pool dropped after an error stop once their batch has run)."""
    kept_pools.shutdown()
    yield
    kept_pools.shutdown()
    assert not _served_children()
    eventually(_no_ezpool_processes, "end of the worker processes", timeout=20)


# --- running -------------------------------------------------------------------------


def test_only_ezpool_joblib_imports_joblib_and_says_how_to_install_it(core_child_env: dict[str, str]) -> None:
    check = (
        "import sys; import ezpool; assert 'joblib' not in sys.modules, 'import ezpool imported joblib'\n"
        "sys.modules['joblib'] = None  # as if it were not installed\n"
        "import ezpool.joblib"
    )
    done = subprocess.run([sys.executable, "-c", check], env=core_child_env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 1
    assert "ImportError: ezpool.joblib needs joblib" in done.stderr and "pip install joblib" in done.stderr


def test_import_registers_the_backend() -> None:
    assert joblib.parallel.BACKENDS["ezpool"] is EzPoolBackend
    with parallel_config(backend="ezpool"):
        backend, _ = joblib.parallel.get_active_backend()
    assert isinstance(backend, EzPoolBackend) and backend.mode == "parallel"


def test_results_in_every_mode(ezpool_config: Any) -> None:
    with ezpool_config(n_jobs=2):
        squares = Parallel()(delayed(h.square)(x) for x in range(200))
        shifted = Parallel()(delayed(lambda x, k=3: x + k)(x) for x in range(20))  # by value
        keywords = Parallel()(delayed(h.add)(a=x, b=1) for x in range(5))
    assert squares == [x * x for x in range(200)]
    assert shifted == [x + 3 for x in range(20)]
    assert keywords == [1, 2, 3, 4, 5]


def test_tasks_run_where_the_mode_says(ezpool_config: Any) -> None:
    with ezpool_config(n_jobs=2):
        pids = set(Parallel()(delayed(h.pid_after_nap)(x, 0.01) for x in range(20)))
    if ezpool_config.mode in ("serial", "threads"):  # in this process
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_no_process_outlives_the_kept_pools(ezpool_config: Any) -> None:
    with ezpool_config(n_jobs=2):
        pids = set(Parallel()(delayed(h.pid_after_nap)(x, 0.01) for x in range(10)))
    kept_pools.shutdown()  # (what happens at interpreter exit)
    assert _no_ezpool_processes() and not _served_children()
    assert not [pid for pid in pids if pid != os.getpid() and h.pid_alive(pid)]


def test_parallel_as_a_context_manager_keeps_one_pool() -> None:
    with Parallel(n_jobs=2, backend="ezpool") as parallel:
        first = set(parallel(delayed(h.pid_after_nap)(x, 0.02) for x in range(10)))
        second = set(parallel(delayed(h.pid_after_nap)(x, 0.02) for x in range(10)))
        assert second <= first  # the same processes


@pytest.mark.parametrize("mode", ["fork", "distributed"])
def test_consecutive_calls_reuse_the_same_processes_or_workers(mode: str) -> None:
    with parallel_config(backend="ezpool", n_jobs=2, **_selecting(mode)):
        first = set(Parallel()(delayed(h.pid_after_nap)(x, 0.05) for x in range(12)))
        second = set(Parallel()(delayed(h.pid_after_nap)(x, 0.05) for x in range(12)))
    assert len(first) == 2 and second == first
    assert all(h.pid_alive(pid) for pid in first)  # kept after the calls, until shut down


def test_other_settings_get_another_pool_and_the_idle_one_stops() -> None:
    with parallel_config(backend="ezpool", n_jobs=2):
        two = set(Parallel()(delayed(h.pid_after_nap)(x, 0.1) for x in range(6)))
    with parallel_config(backend="ezpool", n_jobs=3):
        three = set(Parallel()(delayed(h.pid_after_nap)(x, 0.1) for x in range(9)))
    assert len(two) == 2 and len(three) == 3 and not two & three
    assert not [pid for pid in two if h.pid_alive(pid)]  # stopped (and waited for) when replaced


def test_kept_workers_are_gone_once_the_holder_shuts_down() -> None:
    with parallel_config(backend="ezpool", n_jobs=2, **_selecting("distributed")):
        pids = set(Parallel()(delayed(h.pid_after_nap)(x, 0.05) for x in range(8)))
    assert sorted(pids) == sorted(_served_children())
    kept_pools.shutdown()
    assert not _served_children() and not [pid for pid in pids if h.pid_alive(pid)]


def test_keyword_arguments_of_parallel_are_pool_options_for_that_call() -> None:
    with parallel_config(backend="ezpool", n_jobs=2):
        pids = set(Parallel(mode="serial")(delayed(h.pid_after_nap)(x, 0) for x in range(3)))
        assert pids == {os.getpid()}
        with pytest.raises(TypeError, match="unknown option 'ncpus'; did you mean 'ncpu'"):
            Parallel(ncpus=2)(delayed(h.square)(x) for x in range(3))


def test_options_are_checked_when_the_backend_is_chosen() -> None:
    with pytest.raises(TypeError, match="unknown option 'worker'"):
        parallel_config(backend="ezpool", worker="PYRO:worker@localhost:21000")
    with pytest.raises(ValueError, match="unknown mode 'cluster'"):
        parallel_config(backend="ezpool", mode="cluster")


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_results_as_a_generator(return_as: str) -> None:
    with parallel_config(backend="ezpool", n_jobs=2):
        values = Parallel(return_as=return_as)(delayed(h.square)(x) for x in range(30))
        assert not isinstance(values, list)
        got = list(values)
    if return_as == "generator":
        assert got == [x * x for x in range(30)]
    else:
        assert sorted(got) == [x * x for x in range(30)]


def test_many_tiny_tasks_are_batched() -> None:
    with parallel_config(backend="ezpool", n_jobs=2):
        parallel = Parallel()
        assert parallel(delayed(abs)(-x) for x in range(20000)) == list(range(20000))
    assert parallel.n_dispatched_batches < 2000  # joblib's auto-batching grew the batches


# --- failures ------------------------------------------------------------------------


def test_a_task_exception_is_raised_from_the_call(ezpool_config: Any) -> None:
    calls = [delayed(h.square)(x) for x in range(10)]
    calls[5] = delayed(h.raise_custom)("boom")
    with ezpool_config(n_jobs=2), pytest.raises(h.CustomError, match="boom") as caught:
        Parallel()(calls)
    if ezpool_config.mode not in ("serial", "threads"):  # raised in another process
        cause = caught.value.__cause__
        assert isinstance(cause, RemoteTraceback) and "raise_custom" in cause.traceback_text


def test_an_exception_from_the_task_iterator_is_raised(ezpool_config: Any) -> None:
    def tasks() -> Iterator[Any]:
        yield delayed(h.square)(1)
        raise KeyError("no more tasks")

    with ezpool_config(n_jobs=2), pytest.raises(KeyError, match="no more tasks"):
        Parallel()(tasks())


@pytest.mark.parametrize("mode", ["fork", "distributed"])
def test_a_crashed_worker_process_gives_worker_crashed(mode: str) -> None:
    with parallel_config(backend="ezpool", n_jobs=2, **_selecting(mode)), pytest.raises(WorkerCrashed):
        Parallel()(delayed(h.exit_on)(3, x) for x in range(8))
    eventually(_no_ezpool_processes, "end of the worker processes", timeout=10)


def test_after_an_error_the_batches_running_finish_and_their_processes_stop(tmp_path: Path) -> None:
    naps = [delayed(h.nap_then_record)(str(tmp_path), n, 2.0) for n in range(5)]
    with parallel_config(backend="ezpool", n_jobs=2), pytest.raises(h.CustomError):
        Parallel()([delayed(h.raise_custom)("early"), *naps])
    # Raised without waiting for every nap: 5 naps of 2 s on 2 processes take three rounds.
    assert sum(h.calls(tmp_path).values()) < 5
    eventually(_no_ezpool_processes, "end of the worker processes", timeout=20)


def _raise_after(seconds: float) -> None:
    import time

    time.sleep(seconds)
    raise h.CustomError("late")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", ["fork", "distributed"])
def test_after_an_error_the_running_batches_are_stopped_not_left_running(mode: str, tmp_path: Path) -> None:
    import time

    from tests._beats import beat, started, stop_beating

    calls = [delayed(beat)(str(tmp_path), name, 60) for name in ("a", "b")]
    three = {"mode": MODES[mode].kind, **MODES[mode].options(3)}  # a worker for each call
    with parallel_config(backend="ezpool", n_jobs=3, **three):
        began = time.monotonic()
        with pytest.raises(h.CustomError, match="late"):
            Parallel(batch_size=1)([*calls, delayed(_raise_after)(3.0)])
        took = time.monotonic() - began
    started(tmp_path, ["a", "b"], timeout=0)  # both had started before the other raised
    assert took < 20, f"the call raised after {took:.1f} s"
    stop_beating(tmp_path, ["a", "b"], within=10)


def test_parallel_timeout_raises_joblibs_timeout_error() -> None:
    with parallel_config(backend="ezpool", n_jobs=2), pytest.raises(multiprocessing.TimeoutError):
        Parallel(timeout=0.5)(delayed(h.nap)(x) for x in [0.01, 2.0, 0.01])
    eventually(_no_ezpool_processes, "end of the worker processes", timeout=20)


def test_after_a_failed_call_the_next_distributed_call_runs_at_once() -> None:
    """The failed call's workers (started for its pool, with that pool's key) are killed
    and waited for before it returns; the next call starts its own at the same ports."""
    calls = [delayed(h.pid_after_nap)(x, 0.3) for x in range(12)]
    calls[3] = delayed(h.raise_custom)("boom")
    with parallel_config(backend="ezpool", n_jobs=2, **_selecting("distributed")):
        before = set(Parallel()(delayed(h.pid_after_nap)(x, 0.01) for x in range(4)))
        with pytest.raises(h.CustomError, match="boom"):
            Parallel()(calls)
        assert not [pid for pid in before if h.pid_alive(pid)]  # no eventually: already gone
        after = Parallel()(delayed(h.pid_after_nap)(x, 0.01) for x in range(8))
    assert len(after) == 8 and not set(after) & before


def test_the_pool_timeout_option_stops_a_task() -> None:
    with parallel_config(backend="ezpool", n_jobs=2, timeout=0.5), pytest.raises(TaskTimeout):
        Parallel()(delayed(h.nap)(x) for x in [0.01, 5.0, 0.01])


# --- nesting -------------------------------------------------------------------------


def _inner_sum(n: int) -> tuple[int, str]:
    """A Parallel inside a task, on whatever backend joblib picks there."""
    backend, _ = joblib.parallel.get_active_backend()
    return sum(Parallel(n_jobs=2)(delayed(h.square)(x) for x in range(n))), type(backend).__name__


def _inner_ezpool_sum(n: int) -> tuple[int, int]:
    """A Parallel(backend="ezpool") inside a task: a pool of the task's own."""
    pids = Parallel(n_jobs=2, backend="ezpool")(delayed(h.pid_after_nap)(x, 0.01) for x in range(n))
    return len(set(pids)), os.getpid()


@pytest.mark.parametrize("mode", ["fork", "spawn", "distributed"])
def test_a_nested_parallel_runs_on_threads_of_the_worker(mode: str) -> None:
    with parallel_config(backend="ezpool", n_jobs=2, **_selecting(mode)):
        results = Parallel()(delayed(_inner_sum)(n) for n in range(1, 6))
    assert results == [(sum(x * x for x in range(n)), "ThreadingBackend") for n in range(1, 6)]


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_a_nested_ezpool_parallel_has_processes_of_its_own(mode: str) -> None:
    with parallel_config(backend="ezpool", n_jobs=2, **_selecting(mode)):
        results = Parallel()(delayed(_inner_ezpool_sum)(6) for _ in range(2))
    for inner_processes, outer_pid in results:
        assert inner_processes == 2 and outer_pid != os.getpid()


# --- how many jobs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_jobs", "options", "expected"),
    [
        (3, {}, 3),
        (-1, {}, available_cpus()),
        (-2, {"ncpu": 4}, 3),
        (-1, {"ncpu": 4}, 4),
        (None, {}, 1),
        (1, {}, 1),
        (5, {"mode": "serial"}, 1),
        (None, {"mode": "distributed", "workers": MODES["distributed"].options(3)["workers"]}, 1),
        (-1, {"mode": "distributed", "workers": MODES["distributed"].options(3)["workers"]}, 3),
        (8, {"mode": "distributed", "workers": MODES["distributed"].options(3)["workers"]}, 3),
        (-1, {"mode": "distributed", "workers": MODES["distributed"].options(1)["workers"]}, 2),
        (1, {"mode": "distributed"}, 1),
    ],
)
def test_effective_n_jobs(n_jobs: Any, options: dict[str, Any], expected: int) -> None:
    with parallel_config(backend="ezpool", **options):
        assert joblib.effective_n_jobs(n_jobs) == expected
    assert EzPoolBackend(**options).effective_n_jobs(n_jobs) == expected


@pytest.mark.parametrize("mode", ["fork", "distributed"])
def test_without_n_jobs_the_call_runs_in_the_caller_unless_the_config_sets_it(mode: str) -> None:
    with parallel_config(backend="ezpool", **_selecting(mode)):
        alone = set(Parallel()(delayed(h.pid_after_nap)(x, 0.01) for x in range(6)))
        with parallel_config(n_jobs=2):
            shared = set(Parallel()(delayed(h.pid_after_nap)(x, 0.05) for x in range(6)))
    assert alone == {os.getpid()}
    assert os.getpid() not in shared and len(shared) >= 1


def test_n_jobs_zero_has_no_meaning() -> None:
    with pytest.raises(ValueError, match="n_jobs == 0"):
        EzPoolBackend().effective_n_jobs(0)


def test_the_number_of_processes_is_n_jobs() -> None:
    with parallel_config(backend="ezpool", n_jobs=3):
        pids = set(Parallel()(delayed(h.pid_after_nap)(x, 0.2) for x in range(9)))
    assert len(pids) == 3


def test_the_backend_pickles_without_its_pool() -> None:
    import pickle

    backend = EzPoolBackend("distributed", workers=["PYRO:worker@localhost:21000"])
    copy = pickle.loads(pickle.dumps(backend))
    assert isinstance(copy, EzPoolBackend) and repr(copy) == repr(backend)
    assert repr(backend) == "EzPoolBackend(mode='distributed', workers=['PYRO:worker@localhost:21000'])"


# --- scikit-learn --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fork", "distributed"])
def test_grid_search_finds_what_it_finds_without_ezpool(mode: str) -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    x, y = datasets.load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": ["scale", 0.1]}
    alone = GridSearchCV(SVC(), grid, cv=3).fit(x, y)
    with parallel_config(backend="ezpool", **_selecting(mode)):
        shared = GridSearchCV(SVC(), grid, cv=3, n_jobs=2).fit(x, y)
    assert shared.best_params_ == alone.best_params_
    assert shared.cv_results_["mean_test_score"].tolist() == alone.cv_results_["mean_test_score"].tolist()
