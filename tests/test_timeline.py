"""The timeline every call records (``ezpool.timeline``, ``ezpool._core.recording``), against
real processes and real served workers: every task once per attempt on the worker that ran
it, placed on the caller's clock even where a worker's clock is off by 1,000 s."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from ezpool import Pool, PoolExecutor, WorkerCrashed
from tests.conftest import free_port
from tests.modes import MODES


def where(x):
    """The task's pid and when it started, on the wall clock (which no time namespace shifts)."""
    started = time.time()
    if x == 5:
        raise ValueError("five")
    time.sleep(0.01)
    return os.getpid(), started


def _check_runs(results, timeline, pids):
    """Every task once, on the worker whose process ran it, inside the call, never two at
    once on one worker."""
    runs = list(timeline.runs())
    assert sorted(run.task for run in runs) == sorted(results)
    for run in runs:
        assert run.attempt == 1
        assert -0.01 <= run.start <= run.end <= timeline.wall_time + 0.01, run
        if run.task == 5:
            assert isinstance(run.error, ValueError) and run.failed
            continue
        assert run.error is None
        assert pids(run.worker) == results[run.task][0], run
    by_worker: dict[str, list] = {}
    for run in runs:
        by_worker.setdefault(run.worker, []).append(run)
    for worker_runs in by_worker.values():
        worker_runs.sort(key=lambda run: run.start)
        for before, after in zip(worker_runs, worker_runs[1:]):
            assert after.start >= before.end - 1e-6, (before, after)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["serial", "fork", "spawn", "distributed", "dial-in"])
def test_every_task_runs_once_on_the_worker_that_ran_it(name):
    mode = MODES[name]
    with mode.pool(2) as pool:
        for _ in range(2):  # cold, then warm
            results = pool.map(where, range(30))
            timeline = results.timeline
            assert timeline.mode == mode.kind
            assert len(timeline) == 30 and set(timeline.errors.values()) == {results[5]}
            _check_runs(results, timeline, lambda worker, workers=timeline.workers: workers[worker].pid)
            assert {info.host for info in timeline.workers.values()} <= {os.uname().nodename, "localhost"}
            assert timeline.settings["mode"] == mode.kind and timeline.settings["ezpool"]
            split = timeline.split()
            assert sum(times.tasks for times in split.values()) == 30
            for times in split.values():
                total = times.startup + times.working + times.transfer + times.waiting
                assert total == pytest.approx(max(timeline.wall_time, total), abs=1e-6)


@pytest.mark.timeout(60)
def test_a_cold_pool_counts_its_start_up_and_a_warm_one_does_not():
    with Pool("parallel", ncpu=2, progress=False) as pool:
        cold = pool.map(where, range(10)).timeline
        warm = pool.map(where, range(10)).timeline
    assert {span.worker for span in cold.spans if span.kind == "start-up"} == set(cold.workers)
    assert not [span for span in warm.spans if span.kind == "start-up"]
    assert all(times.startup > 0 for times in cold.split().values())


@pytest.mark.timeout(60)
def test_a_run_cut_by_a_crash_is_an_attempt_of_its_own(tmp_path):
    marker = tmp_path / "crashed"

    def crash_once(x):
        if x == 3 and not marker.exists():
            marker.write_text("")
            os._exit(7)
        return os.getpid()

    with Pool("parallel", ncpu=2, progress=False) as pool:
        results = pool.map(crash_once, range(8))
    assert not results.errors
    runs = [run for run in results.timeline.runs() if run.task == 3]
    assert [run.attempt for run in sorted(runs, key=lambda run: run.attempt)] == [1, 2]
    lost, second = sorted(runs, key=lambda run: run.attempt)
    assert isinstance(lost.error, WorkerCrashed) and "ran again" in str(lost.error)
    assert second.error is None and results.timeline.workers[second.worker].pid == results[3]
    assert lost.worker != second.worker  # the process that died is not the one that ran it again
    assert lost.end <= second.start + 1e-6


@pytest.mark.timeout(60)
def test_stored_outcomes_are_counted_not_placed(tmp_path):
    store = tmp_path / "runs.sqlite"
    with Pool("serial", progress=False, store=store) as pool:
        pool.map(where, range(6))
        again = pool.map(where, range(10))
    timeline = again.timeline
    assert timeline.stored == 6
    assert sorted(run.task for run in timeline.runs()) == [6, 7, 8, 9]


@pytest.mark.timeout(90)
def test_a_worker_whose_clock_is_1000_s_ahead_lands_its_tasks_where_they_ran(start_daemon):
    """The worker runs in a time namespace (``unshare --time``) whose monotonic clock is
    1,000 s ahead of ours; the wall clock, which no namespace shifts, says when each task
    really started."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a time namespace needs root and util-linux's unshare")
    probe = subprocess.run(["unshare", "-T", "--monotonic", "1000", "--fork", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"this kernel gives no time namespace: {probe.stderr.decode().strip()}")
    port = free_port()
    start_daemon(["unshare", "-T", "--monotonic", "1000", "--fork",
                  sys.executable, "-m", "ezpool.serve", "--port", str(port)])
    uri = f"PYRO:worker@127.0.0.1:{port}"
    with Pool("distributed", workers=[uri], progress=False) as pool:
        results = pool.map(where, range(20))
    timeline = results.timeline
    assert timeline.offsets[uri] == pytest.approx(1000, abs=0.05)
    for run in timeline.runs():
        if run.task == 5:
            continue
        really = results[run.task][1] - timeline.started_at  # on the wall clock, from the call's start
        assert run.start == pytest.approx(really, abs=0.05), run


@pytest.mark.timeout(60)
def test_an_executor_keeps_its_timeline_only_when_asked(tmp_path):
    with PoolExecutor("parallel", 2) as executor:
        executor.submit(abs, -1).result()
        with pytest.raises(ValueError, match="trace=PATH or report=PATH"):
            executor.timeline  # noqa: B018
    trace = tmp_path / "calls.json"
    with PoolExecutor("parallel", 2, trace=trace) as executor:
        futures = [executor.submit(where, x) for x in range(8)]
        assert list(executor.map(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
        for future in futures:
            future.exception()
        timeline = executor.timeline
    assert trace.exists()
    assert len(timeline) >= 9  # 8 submits, the map in one slice or more
    shown = [run.task for run in timeline.runs()]
    assert "where(0,)" in shown and "where(7,)" in shown
    assert [str(error) for error in timeline.errors.values()] == ["five"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("option", ["trace", "report"])
def test_a_trace_or_report_that_cannot_be_written_is_refused_before_any_work(tmp_path, option):
    with pytest.raises(ValueError, match=f"{option}=.*has no folder"):
        Pool(**{option: tmp_path / "missing" / "out"})
    with pytest.raises(ValueError, match="is a folder"):
        Pool("serial").map(abs, [1], **{option: tmp_path})
    with pytest.raises(TypeError, match=f"{option} must be a file path"):
        Pool(**{option: 3})


@pytest.mark.timeout(60)
def test_the_bar_of_a_distributed_call_shows_live_workers_and_failures(capfd):
    with MODES["distributed"].pool(2, progress=True) as pool:
        pool.map(where, range(12))
    err = capfd.readouterr().err
    assert "workers=2" in err and "failed=1" in err, err[-500:]


@pytest.mark.timeout(60)
def test_a_pool_with_report_and_trace_writes_both_after_every_call(tmp_path):
    import json

    report, trace = tmp_path / "run.html", tmp_path / "run.json"
    with Pool("parallel", ncpu=2, progress=False, report=report, trace=trace) as pool:
        pool.map(where, range(10))
        first = report.read_text()
        pool.map(where, range(10, 25), report=tmp_path / "second.html")
    assert "10 task runs" in first and "<html" in first.lower()
    assert "15 task runs" in (tmp_path / "second.html").read_text()
    events = json.loads(trace.read_text())["traceEvents"]
    shown = sorted(event["args"]["task"] for event in events if event.get("cat") in ("task", "failed"))
    assert shown == sorted(repr(x) for x in range(10, 25))  # the second call's, written over the first
