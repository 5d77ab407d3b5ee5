"""``ezpool.trace``: a run's timeline as a Chrome trace (Perfetto, chrome://tracing), and back.

``check_trace`` is what Perfetto asks of the file, written down: the JSON object
format, metadata naming every process and thread used, and ``X`` events that nest
on each track (pid, tid). Synthetic timelines test the writer's rules (clipping,
span tracks, round trips); real runs in every mode follow, checked by the same
function; last, Chrome's own trace parser (DevTools', in a real headless Chromium)
reads traces and must place every event on its named track.
"""

from __future__ import annotations

import json
import os
import time
from array import array
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ezpool import RemoteError
from ezpool.timeline import Span, Timeline, WorkerInfo
from ezpool.trace import read_trace, write_trace
from tests.conftest import eventually
from tests.modes import MODES, Mode

pytestmark = pytest.mark.timeout(60)


# --- the checker ------------------------------------------------------------------------


class Run(dict):
    """A task run as a trace shows it: the event's fields, plus ``thread`` and ``host``
    (the names its metadata gives its tid and pid)."""


def check_trace(path: Path) -> tuple[dict[str, Any], list[Run], list[Run]]:
    """Load ``path``, assert it is a well-formed EzPool Chrome trace whose events nest per
    track; its ``otherData``, its task runs and its other spans (each with its track's names)."""
    document = json.loads(path.read_text())
    assert set(document) == {"traceEvents", "displayTimeUnit", "otherData"}
    assert document["displayTimeUnit"] == "ms"
    other = document["otherData"]
    assert other["format"] == "ezpool trace" and other["ezpool_version"] and other["python_version"]
    processes: dict[int, str] = {}
    threads: dict[tuple[int, int], str] = {}
    sorted_processes, sorted_threads = set(), set()
    timed = []
    for event in document["traceEvents"]:
        assert event["ph"] in ("M", "X"), event
        assert isinstance(event["pid"], int), event
        if event["ph"] == "M":
            if event["name"] == "process_name":
                assert event["pid"] not in processes, f"process {event['pid']} named twice"
                processes[event["pid"]] = event["args"]["name"]
            elif event["name"] == "thread_name":
                track = (event["pid"], event["tid"])
                assert track not in threads, f"thread {track} named twice"
                threads[track] = event["args"]["name"]
            elif event["name"] == "process_sort_index":
                sorted_processes.add(event["pid"])
            else:
                assert event["name"] == "thread_sort_index", event
                sorted_threads.add((event["pid"], event["tid"]))
            continue
        assert isinstance(event["name"], str) and isinstance(event["cat"], str), event
        assert isinstance(event["ts"], int) and isinstance(event["dur"], int) and event["dur"] >= 0, event
        assert isinstance(event["tid"], int) and isinstance(event["args"], dict), event
        timed.append(event)
    assert set(processes) == sorted_processes and set(threads) == sorted_threads
    assert len(set(threads.values())) == len(threads), "two tracks with one name"
    check_nesting(timed)
    runs, spans = [], []
    for event in timed:
        track = (event["pid"], event["tid"])
        assert event["pid"] in processes and track in threads, f"unnamed track {track}"
        run = Run(event, thread=threads[track], host=processes[event["pid"]])
        if event["cat"] in ("task", "failed"):
            args = event["args"]
            assert set(args) <= {"task", "attempt", "worker", "error"}, args
            assert ("error" in args) == (event["cat"] == "failed"), event
            assert run["thread"] == args["worker"], f"{event} on the track of {run['thread']}"
            assert (other["workers"][args["worker"]][0] or "unknown host") == run["host"], event
            assert len(event["name"]) <= 60 and args["task"].startswith(event["name"].rstrip("."))
            runs.append(run)
        else:
            assert event["cat"] in ("start-up", "transfer", "backup", "lost"), event
            assert run["thread"].startswith(event["args"]["worker"] + " · transfers"), event
            spans.append(run)
    return other, runs, spans


def check_nesting(events: list[dict[str, Any]]) -> None:
    """Assert that the ``X`` events of each track nest: sorted by start (the longer first),
    each ends before the innermost still-open event that it starts inside of."""
    tracks: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for event in events:
        tracks.setdefault((event["pid"], event["tid"]), []).append(event)
    for track, listed in tracks.items():
        open_ends: list[int] = []
        for event in sorted(listed, key=lambda e: (e["ts"], -e["dur"])):
            start, end = event["ts"], event["ts"] + event["dur"]
            while open_ends and open_ends[-1] <= start:
                open_ends.pop()
            assert not open_ends or end <= open_ends[-1], (
                f"on track {track}, {event['name']!r} [{start}, {end}] crosses an event "
                f"ending at {open_ends[-1]}")
            open_ends.append(end)


# --- synthetic timelines -----------------------------------------------------------------


def timeline(runs: list[tuple[Any, int, str, float, float, Optional[BaseException]]],
             spans: tuple[Span, ...] = (), hosts: Optional[dict[str, str]] = None) -> Timeline:
    """A timeline of ``runs`` (task, attempt, worker, start, end, error), in the order given."""
    names = list(dict.fromkeys(run[2] for run in runs))
    hosts = hosts or {}
    return Timeline(
        mode="parallel", settings={"ncpu": "2", "chunksize": "1"}, started_at=1_700_000_000.25,
        wall_time=max([run[4] for run in runs] + [0.0]),
        workers={name: WorkerInfo(name, hosts.get(name, "node1"), 40 + index)
                 for index, name in enumerate(names)},
        tasks=[run[0] for run in runs], attempts=[run[1] for run in runs],
        owners=[names.index(run[2]) for run in runs], starts=array("d", (run[3] for run in runs)),
        ends=array("d", (run[4] for run in runs)),
        errors={index: run[5] for index, run in enumerate(runs) if run[5] is not None},
        spans=spans, offsets={name: 0.001 for name in names},
    )


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


RUNS = [
    (1, 1, "pid 41", 0.010, 0.020, None),
    (2, 1, "pid 42", 0.011, 0.030, ValueError("odd task")),
    ("x" * 500, 1, "pid 41", 0.020, 0.025, None),                    # a long repr, cut
    (3, 1, "PYRO:worker@10.0.0.2:21000", 0.012, 0.050, RemoteError("MyError", "custom")),
    (3, 2, "pid 41", 0.0249995, 0.040, None),                         # overlaps the run before by 0.5 µs
    (Unprintable(), 1, "pid 42", 0.031, 0.032, None),
]
SPANS = (
    Span("start-up", "pid 41", 0.0, 0.009, "process"),
    Span("transfer", "pid 41", 0.005, 0.012, "tasks 1, 'xxx'"),    # overlaps the start-up
    Span("transfer", "pid 41", 0.008, 0.030, "tasks 3"),            # and both of those
    Span("lost", "pid 42", 0.031, 0.045, "task 3"),
    Span("backup", "PYRO:worker@10.0.0.2:21000", 0.02, 0.03),
)
LONG = "x" * 197 + "..."  # "x" * 500, cut to 200 characters
HOSTS = {"PYRO:worker@10.0.0.2:21000": "10.0.0.2"}


def test_every_run_appears_once_with_its_attempt_worker_and_error(tmp_path):
    path = tmp_path / "trace.json"
    write_trace(timeline(RUNS, SPANS, HOSTS), path)
    other, runs, spans = check_trace(path)
    assert [(run["args"]["attempt"], run["args"]["worker"], run["args"].get("error")) for run in runs] == [
        (1, "pid 41", None), (1, "pid 42", "ValueError: odd task"),
        (1, "PYRO:worker@10.0.0.2:21000", "MyError: custom"), (1, "pid 41", None), (3 - 1, "pid 41", None),
        (1, "pid 42", None),
    ]
    assert [run["args"]["task"] for run in runs][:2] == ["1", "2"]
    long = runs[3]
    assert long["name"] == "x" * 57 + "..." and long["args"]["task"] == LONG
    assert runs[5]["name"].startswith("<Unprintable instance at 0x")  # its repr raised
    assert {run["cat"] for run in runs} == {"task", "failed"} and runs[1]["cat"] == "failed"
    assert [(run["host"], run["thread"]) for run in runs[:3]] == [
        ("node1", "pid 41"), ("node1", "pid 42"), ("10.0.0.2", "PYRO:worker@10.0.0.2:21000")]
    assert [(span["cat"], span["name"], span["ts"], span["dur"]) for span in spans] == [
        ("start-up", "start-up process", 0, 9000), ("transfer", "transfer tasks 1, 'xxx'", 5000, 7000),
        ("transfer", "transfer tasks 3", 8000, 22000), ("backup", "backup", 20000, 10000),
        ("lost", "lost task 3", 31000, 14000)]
    assert other["mode"] == "parallel" and other["settings"] == {"ncpu": "2", "chunksize": "1"}
    assert other["started_at"] == 1_700_000_000.25 and other["wall_time"] == 0.05
    assert other["offsets"]["pid 41"] == 0.001
    assert other["workers"]["pid 42"] == ["node1", 41]


def test_overlapping_spans_of_a_worker_go_on_tracks_of_their_own(tmp_path):
    path = tmp_path / "trace.json"
    write_trace(timeline(RUNS, SPANS, HOSTS), path)
    _, runs, spans = check_trace(path)
    assert [span["thread"] for span in spans[:3]] == [
        "pid 41 · transfers", "pid 41 · transfers 2", "pid 41 · transfers 3"]
    assert spans[4]["thread"] == "pid 42 · transfers"
    tracks = {(run["pid"], run["tid"]) for run in runs + spans}
    # three workers' runs; pid 41's three span tracks, one each for the others
    assert len(tracks) == 3 + 3 + 1 + 1


def test_runs_that_overlap_on_a_worker_are_clipped_to_follow_each_other(tmp_path):
    path = tmp_path / "trace.json"
    write_trace(timeline(RUNS), path)
    _, runs, _ = check_trace(path)
    before, retried = runs[3], runs[4]  # "xxx..." ran [20000, 25000] µs, task 3 from 24999.5 µs
    assert before["ts"] + before["dur"] == 25000 and (retried["ts"], retried["dur"]) == (25000, 15000)


def test_runs_listed_out_of_order_are_not_clipped(tmp_path):
    path = tmp_path / "trace.json"
    write_trace(timeline([(1, 1, "w", 0.5, 0.6, None), (2, 1, "w", 0.1, 0.2, None)]), path)
    _, runs, _ = check_trace(path)
    assert [(run["name"], run["ts"], run["dur"]) for run in runs] == [
        ("2", 100000, 100000), ("1", 500000, 100000)]


def test_the_nesting_check_finds_crossing_events():
    crossing = [{"pid": 1, "tid": 1, "ts": 0, "dur": 10, "name": "a"},
                {"pid": 1, "tid": 1, "ts": 5, "dur": 10, "name": "b"}]
    with pytest.raises(AssertionError, match="crosses"):
        check_nesting(crossing)
    check_nesting([{**crossing[1], "tid": 2}, crossing[0]])  # on two tracks they may
    check_nesting([crossing[0], {**crossing[1], "ts": 10}, {**crossing[1], "ts": 2, "dur": 3}])


def test_a_trace_reads_back_as_its_timeline(tmp_path):
    path = tmp_path / "trace.json"
    written = timeline(RUNS, SPANS, HOSTS)
    write_trace(written, path)
    read = read_trace(path)
    assert (read.mode, read.settings, read.started_at, read.wall_time, read.offsets, read.stored) == (
        written.mode, written.settings, written.started_at, written.wall_time, written.offsets, 0)
    assert read.workers == written.workers
    assert [(run.task, run.attempt, run.worker, run.start, run.end) for run in read.runs()] == [
        ("1", 1, "pid 41", 0.01, 0.02), ("2", 1, "pid 42", 0.011, 0.03),
        ("3", 1, "PYRO:worker@10.0.0.2:21000", 0.012, 0.05), (LONG, 1, "pid 41", 0.02, 0.025),
        ("3", 2, "pid 41", 0.025, 0.04), (read.tasks[5], 1, "pid 42", 0.031, 0.032),
    ]
    errors = {index: (type(error), getattr(error, "type_name", None), str(error))
              for index, error in read.errors.items()}
    assert errors == {1: (errors[1][0], "ValueError", "ValueError: odd task"),
                      2: (errors[1][0], "MyError", "MyError: custom")}
    assert issubclass(errors[1][0], RuntimeError)
    assert read.spans == sorted(SPANS, key=lambda span: span.start)
    assert read.split()["pid 41"].tasks == 3 and read.split()["pid 42"].failed == 1
    write_trace(read, tmp_path / "again.json")  # what was read back writes the same trace
    assert (tmp_path / "again.json").read_text() == path.read_text()


def test_a_trace_laid_out_by_another_tool_still_reads(tmp_path):
    path, pretty = tmp_path / "trace.json", tmp_path / "pretty.json"
    write_trace(timeline(RUNS, SPANS, HOSTS), path)
    document = json.loads(path.read_text())
    pretty.write_text(json.dumps({"traceEvents": document["traceEvents"], "otherData": document["otherData"]},
                                 indent=2))
    def shown(source: Path) -> list[tuple[Any, ...]]:
        return [(*run[:-1], str(run.error)) for run in read_trace(source).runs()]

    assert shown(pretty) == shown(path) and len(shown(path)) == 6


@pytest.mark.parametrize("text", [
    '{"traceEvents": [{"name": "a", "ph": "X", "ts": 0, "dur": 1, "pid": 1, "tid": 1}]}',  # not ours
    '[{"name": "a", "ph": "X", "ts": 0, "dur": 1, "pid": 1, "tid": 1}]',  # the array format
    '{"otherData": {"format": "something else"}, "traceEvents": []}',
    "not json at all",
    "",
])
def test_a_file_that_is_not_an_ezpool_trace_is_refused_by_name(tmp_path, text):
    path = tmp_path / "other.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{str(path)!r} is not an EzPool trace"):
        read_trace(path)


def test_a_damaged_ezpool_trace_is_refused_by_name(tmp_path):
    path = tmp_path / "trace.json"
    write_trace(timeline(RUNS), path)
    path.write_text(path.read_text().replace('"worker":"pid 42"', '"worker":"pid 99"'))
    with pytest.raises(ValueError, match=f"{str(path)!r} is a damaged EzPool trace: KeyError"):
        read_trace(path)


def test_an_empty_timeline_writes_an_empty_trace(tmp_path):
    path = tmp_path / "trace.json"
    write_trace(timeline([]), path)
    other, runs, spans = check_trace(path)
    assert (runs, spans, other["workers"]) == ([], [], {})
    assert len(read_trace(path)) == 0


_times = st.floats(0, 1, allow_nan=False).map(lambda t: round(t, 7))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), _times, _times), max_size=40),
       spans=st.lists(st.tuples(st.sampled_from(["a", "b", "d"]),
                                st.sampled_from(["start-up", "transfer", "lost"]), _times, _times),
                      max_size=20))
def test_any_timeline_writes_a_trace_that_nests_with_every_run_once(tmp_path, runs, spans):
    """Runs and spans at any times, overlapping any way (sorted by start, as a timeline
    holds them): the trace nests on every track and holds each run once."""
    runs = sorted((index, 1, worker, min(a, b), max(a, b), None) for index, (worker, a, b) in enumerate(runs))
    runs.sort(key=lambda run: run[3])
    path = tmp_path / "trace.json"
    spans = [Span(kind, worker, min(a, b), max(a, b)) for worker, kind, a, b in spans]
    write_trace(timeline(runs, tuple(spans)), path)
    _, written, written_spans = check_trace(path)
    assert sorted((int(run["args"]["task"]), run["args"]["worker"]) for run in written) == sorted(
        (run[0], run[2]) for run in runs)
    assert len(written_spans) == len(spans)
    assert sorted(run.task for run in read_trace(path).runs()) == sorted(str(run[0]) for run in runs)


# --- real runs, in every mode ------------------------------------------------------------


def pid_or_fail(task: int) -> int:
    """Naps 10 ms and says which process ran it; tasks 4, 9, 14, ... raise instead."""
    if task % 5 == 4:
        raise ValueError(f"task {task} fails")
    time.sleep(0.01)
    return os.getpid()


def pid_dying_once(marker: str, task: int) -> int:
    """Task 3 kills its own process the first time it runs (``marker`` records that it did)."""
    if task == 3 and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)
    time.sleep(0.01)
    return os.getpid()


def check_runs_of(path: Path, values: dict[Any, Any], expected: dict[tuple[int, int], str],
                  number: Callable[[str], int] = int) -> list[Run]:
    """Check the trace at ``path`` (``check_trace``) of a call whose results are ``values``:
    the runs are exactly ``expected`` ((task, attempt) -> "task" or an error's type), each
    inside the call, and a run that returned a pid ran on the worker of that pid. ``number``
    reads a task's number from its text."""
    other, runs, _ = check_trace(path)
    by_attempt = {(number(run["args"]["task"]), run["args"]["attempt"]): run for run in runs}
    assert len(by_attempt) == len(runs), "a run appears twice"
    ended = {key: run["args"].get("error", "task").partition(":")[0] for key, run in by_attempt.items()}
    assert ended == expected
    wall = round(other["wall_time"] * 1e6)
    for (task, _), run in by_attempt.items():
        host, pid = other["workers"][run["args"]["worker"]]
        assert run["ts"] >= 0 and run["ts"] + run["dur"] <= wall + 1, (run, wall)
        if run["cat"] == "task":
            assert pid == values[task], f"{run} ran in process {values[task]}, not {pid}"
            assert run["dur"] >= 9_000, run  # it napped 10 ms
            assert host and run["host"] == host
    return runs


@pytest.fixture(params=[name for name, mode in MODES.items() if mode.remote])
def remote_mode(request) -> Mode:
    """Each mode whose tasks run in other processes (a task there may kill its own)."""
    return MODES[request.param]


def _expected(tasks: range) -> dict[tuple[int, int], str]:
    return {(task, 1): "ValueError" if task % 5 == 4 else "task" for task in tasks}


@pytest.mark.timeout(120)
def test_a_pool_call_traces_every_run_on_the_worker_that_ran_it(mode, tmp_path):
    path, saved = tmp_path / "trace.json", tmp_path / "saved.json"
    pool = mode.pool(trace=str(path), chunksize=2)
    try:
        results = pool.map(pid_or_fail, range(12))
    finally:
        pool.shutdown()
    assert sorted(results.errors) == [4, 9] and len(results) == 12
    runs = check_runs_of(path, results, _expected(range(12)))
    assert len({run["args"]["worker"] for run in runs}) == (1 if mode.kind == "serial" else 2)
    assert str(results.errors[9]) in by_task(runs)[9]["args"]["error"]
    results.save_trace(saved)
    assert saved.read_text() == path.read_text()
    assert len(read_trace(saved)) == 12


def by_task(runs: list[Run]) -> dict[int, Run]:
    return {int(run["args"]["task"]): run for run in runs}


@pytest.mark.timeout(180)
def test_a_task_whose_worker_dies_is_traced_once_per_attempt(remote_mode, tmp_path):
    mode = remote_mode
    path, marker = tmp_path / "trace.json", str(tmp_path / "died")
    pool = mode.pool(trace=str(path), chunksize=1)
    try:
        results = pool.map(partial(pid_dying_once, marker), range(8))
    finally:
        pool.shutdown()
    assert results.errors == {} and os.path.exists(marker)
    other, runs, spans = check_trace(path)
    ran = [run for run in runs if run["args"]["task"] == "3" and run["cat"] == "task"]
    cut = [run for run in runs if run["args"]["task"] == "3" and run["cat"] == "failed"]
    expected = {(task, 1): "task" for task in range(8)}
    if cut:  # the run the worker's death cut, charged an attempt
        expected[3, 1], expected[3, 2] = "WorkerCrashed", "task"
    else:  # or charged none (a copy ran elsewhere first): a span on the worker that died
        cut = [span for span in spans if span["cat"] in ("lost", "backup") and "3" in span["args"]["detail"]]
    assert len(ran) == 1 and len(cut) == 1, f"task 3: runs {ran}, cut short {cut}; spans {spans}"
    check_runs_of(path, results, expected)
    died, again = other["workers"][cut[0]["args"]["worker"]], other["workers"][ran[0]["args"]["worker"]]
    assert again[1] == results[3]
    if mode.kind == "parallel" or mode.dial_in:  # named by pid: the process that died ran it no more
        assert died[1] != results[3]


@pytest.mark.timeout(120)
def test_an_executor_traces_every_call_on_the_worker_that_ran_it(mode, tmp_path):
    path = tmp_path / "trace.json"
    executor = mode.executor(trace=str(path))
    try:
        futures = {task: executor.submit(pid_or_fail, task) for task in range(12)}
        values = {task: future.result() for task, future in futures.items() if future.exception(60) is None}
        assert sorted(set(range(12)) - set(values)) == [4, 9]
        eventually(lambda: len(executor.timeline) == 12, "every call on the executor's timeline", 10)
        assert not path.exists()  # written when it shuts down
    finally:
        executor.shutdown()
    check_runs_of(path, values, _expected(range(12)), number=lambda label: int(label[len("pid_or_fail("):-2]))
    assert [run.task for run in read_trace(path).runs()][:1] in (["pid_or_fail(0,)"], ["pid_or_fail(1,)"])


@pytest.mark.timeout(120)
def test_a_joblib_call_traces_every_batch_on_the_worker_that_ran_it(mode, tmp_path):
    from joblib import Parallel, delayed, parallel_config

    from ezpool.joblib import kept_pools

    path = tmp_path / "trace.json"
    try:
        with parallel_config(backend="ezpool", mode=mode.kind, **mode.options(), trace=str(path)):
            values = Parallel(n_jobs=2, batch_size=1)(delayed(pid_or_fail)(task) for task in range(0, 24, 6))
    finally:
        kept_pools.shutdown()
    if mode.kind == "serial" and not path.exists():
        pytest.xfail("joblib runs the serial mode with its own SequentialBackend (as n_jobs=1): "
                     "no EzPool pool runs the tasks, and no trace is written")
    other, runs, _ = check_trace(path)
    assert len(runs) == 4 and {run["args"]["attempt"] for run in runs} == {1}
    assert {run["cat"] for run in runs} == {"task"} and all(run["dur"] >= 9_000 for run in runs)
    assert {other["workers"][run["args"]["worker"]][1] for run in runs} == set(values)
    assert all("1 call(s) to pid_or_fail" in run["args"]["task"] for run in runs), runs


@pytest.mark.timeout(120)
def test_a_failed_joblib_call_traces_its_failure(mode, tmp_path):
    from joblib import Parallel, delayed, parallel_config

    from ezpool.joblib import kept_pools

    path = tmp_path / "trace.json"
    try:
        with parallel_config(backend="ezpool", mode=mode.kind, **mode.options(), trace=str(path)), \
                pytest.raises(ValueError, match="task 4 fails"):
            Parallel(n_jobs=2, batch_size=1)(delayed(pid_or_fail)(task) for task in (0, 4))
    finally:
        kept_pools.shutdown()
    if mode.kind == "serial" and not path.exists():
        pytest.xfail("joblib runs the serial mode with its own SequentialBackend: no trace is written")
    _, runs, _ = check_trace(path)
    errors = [run["args"]["error"] for run in runs if run["cat"] == "failed"]
    assert errors.count("ValueError: task 4 fails") == 1, errors
    # joblib stops the pool when a task fails: task 0 may be cut (killed, or never sent)
    assert all(error.startswith("WorkerCrashed: ") for error in errors if "task 4" not in error), errors


# --- Chrome's own trace parser -----------------------------------------------------------

#: The trace engine of Chrome's DevTools (its Performance panel, which loads Chrome traces),
#: as Chromium bundles it. It places each event of a thread in a tree of calls, and leaves
#: out, without a word, an event that crosses another: every event must be in the tree.
_TRACE_APP = "devtools://devtools/bundled/trace_app.html"
_PARSE = """(async () => {
  const Trace = await import('./models/trace/trace.js');
  const model = Trace.TraceModel.Model.createWithAllHandlers();
  await model.parse(%s, {metadata: {}, isFreshRecording: false});
  const data = model.parsedTrace(model.lastTraceIndex()).data;
  const count = node => 1 + [...node.children].reduce((sum, child) => sum + count(child), 0);
  const tracks = [];
  for (const [pid, process] of data.Renderer.processes) {
    for (const [tid, thread] of process.threads) {
      const placed = thread.tree ? [...thread.tree.roots].reduce((sum, root) => sum + count(root), 0) : 0;
      tracks.push([pid, tid, thread.name, thread.entries.length, placed]);
    }
  }
  const hosts = [...data.Meta.processNames].map(([pid, event]) => [pid, event.args.name]);
  return JSON.stringify({tracks, hosts});
})()"""


@pytest.fixture(scope="module")
def chrome():
    """Chrome's DevTools trace engine in a real headless Chromium (network off)."""
    from tests.browser import Browser, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium on this machine (.ci/run installs the distribution's)")
    with Browser(timeout=60) as browser:
        browser.open(_TRACE_APP)
        yield browser


def chrome_tracks(chrome, events: list[dict[str, Any]]) -> tuple[dict[tuple[int, int], tuple[str, int, int]],
                                                                  dict[int, str]]:
    """What Chrome makes of ``events``: per (pid, tid), the thread's name, how many events
    it holds and how many of them it placed in the thread's tree; each pid's name."""
    read = json.loads(chrome.evaluate(_PARSE % json.dumps(events), wait=True))
    assert not chrome.exceptions, chrome.exceptions
    return ({(pid, tid): (name, held, placed) for pid, tid, name, held, placed in read["tracks"]},
            dict(read["hosts"]))


def test_chrome_drops_an_event_that_crosses_another(chrome):
    """The check below can fail: Chrome leaves a crossing event out of its thread's tree."""
    events = [{"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "w"}},
              {"name": "a", "ph": "X", "ts": 0, "dur": 10, "pid": 1, "tid": 1, "args": {}},
              {"name": "b", "ph": "X", "ts": 5, "dur": 10, "pid": 1, "tid": 1, "args": {}}]
    assert chrome_tracks(chrome, events)[0] == {(1, 1): ("w", 2, 1)}
    events[2]["ts"] = 10
    assert chrome_tracks(chrome, events)[0] == {(1, 1): ("w", 2, 2)}


@pytest.mark.timeout(120)
def test_chrome_places_every_event_on_its_named_track(chrome, tmp_path):
    """A synthetic trace full of overlaps, and a real parallel call's: Chrome names every
    process and thread as the trace does, and places every event in its thread's tree."""
    busy = [(index, 1, f"pid {40 + index % 3}", index * 0.0001, index * 0.0001 + 0.00035, None)
            for index in range(300)]  # each run overlaps the next on its worker by 50 µs
    spans = tuple(Span("transfer", f"pid {40 + index % 3}", index * 0.0002, index * 0.0002 + 0.001)
                  for index in range(50))
    synthetic, real = tmp_path / "synthetic.json", tmp_path / "real.json"
    write_trace(timeline(busy, spans), synthetic)
    pool = MODES["fork"].pool(trace=str(real))
    try:
        pool.map(pid_or_fail, range(20))
    finally:
        pool.shutdown()
    for path in (synthetic, real):
        document = json.loads(path.read_text())
        events = document["traceEvents"]
        threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
        held: dict[tuple[int, int], int] = {}
        for event in events:
            if event["ph"] == "X":
                held[event["pid"], event["tid"]] = held.get((event["pid"], event["tid"]), 0) + 1
        tracks, hosts = chrome_tracks(chrome, events)
        assert tracks == {track: (threads[track], count, count) for track, count in held.items()}, path.name
        assert hosts == {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
        assert len(tracks) >= 4 and sum(held.values()) >= 20


@pytest.mark.timeout(120)
def test_two_writers_of_one_path_at_once_leave_a_whole_file(tmp_path):
    # A joblib call that fails writes its trace as its pool is given back, while the
    # executor may write it as it shuts down: the file must be one writer's, whole.
    import threading

    from ezpool import Pool
    from ezpool.report import write_report

    with Pool("serial", progress=False) as pool:
        big = pool.map(abs, range(20_000)).timeline
        small = pool.map(abs, range(3)).timeline
    for writer, path in ((write_trace, tmp_path / "run.json"), (write_report, tmp_path / "run.html")):
        for _ in range(5):
            errors: list[BaseException] = []

            def write(timeline: Timeline, writer=writer, path=path, errors=errors) -> None:
                try:
                    writer(timeline, path)
                except BaseException as exc:  # shown by the assertion below
                    errors.append(exc)

            threads = [threading.Thread(target=write, args=(timeline,)) for timeline in (big, small)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            text = path.read_text()
            if writer is write_trace:
                assert len(json.loads(text)["traceEvents"]) > 3
            else:
                assert text.rstrip().endswith("</html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.html", "run.json"]  # no leftovers
