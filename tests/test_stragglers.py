"""A slow but live worker does not hold up the end of a ``dmap`` call: backup copies.

The first tests drive ``Call`` by hand (no network): which chunk gets copied, and
that whichever copy answers first settles its tasks while the other counts
nothing. The others run two real ``ezpool.serve`` workers, one of them slow
(started with ``EZPOOL_TEST_SLOW`` in its environment, which ``straggle`` sleeps).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from array import array

import pytest

from ezpool import Pool, _pyro
from ezpool._backends.distributed.backups import FLOOR, Claim, pick
from ezpool._backends.distributed.crew import Crew
from ezpool._backends.distributed.dispatch import Call, Target, Verdict
from ezpool._backends.distributed.links import Link
from ezpool._core.chunking import Chunk, ChunkQueue
from ezpool._core.records import Batch
from ezpool._worker.running import pack_chunk
from ezpool.options import Options
from tests import _workers as w

_LOGGER = "ezpool._backends.distributed.dispatch"


# --- which chunk is copied, and when --------------------------------------------------


def _link(port: int) -> Link:
    text = f"PYRO:worker@127.0.0.1:{port}"
    return Link(text, _pyro.parse_uri(text), None)


def _claim(start: int, stop: int, since: float, port: int = 1) -> Claim:
    return Claim(Chunk(start, stop, (), False), _link(port), since)


def test_nothing_is_copied_before_a_task_of_the_call_was_measured():
    assert pick([_claim(0, 1, since=0.0)], None, now=100.0) == (None, math.inf)


def test_a_chunk_is_copied_once_late_for_its_size_and_the_oldest_first():
    young, old = _claim(0, 1, since=10.0), _claim(1, 2, since=5.0)
    # Tasks of 1 s: one-task chunks are due 2 s after they were sent.
    assert pick([young], 1.0, now=11.0) == (None, pytest.approx(1.0))
    assert pick([young, old], 1.0, now=12.5) == (old, 0.0)
    # Tiny tasks: a chunk is never late before FLOOR seconds.
    assert pick([young], 1e-6, now=10.0 + FLOOR / 2) == (None, pytest.approx(FLOOR / 2))


def test_a_chunk_already_copied_or_settled_is_not_copied_again():
    copied, settled = _claim(0, 1, since=0.0), _claim(1, 2, since=0.0)
    copied.links.append(_link(2))
    settled.settled = True
    assert pick([copied, settled], 0.01, now=100.0) == (None, math.inf)


# --- the first answer settles the chunk -------------------------------------------------


def _two_link_call(options: Options) -> tuple[Call, Link, Link]:
    """A call of two tasks over two links that are never connected: ``Call`` driven by hand."""
    tasks = [10, 11]
    links = [_link(1), _link(2)]
    pending = ChunkQueue(tasks, len(links), None, split=True)
    call = Call(tasks, pending, links, Target("f", "", None), options, lambda link: False, Crew())
    return call, links[0], links[1]


def _done(chunk: Chunk, value: int) -> Verdict:
    count = chunk.stop - chunk.start
    return Verdict("done", reply=pack_chunk(chunk.start, ([value] * count, array("d", [0.01] * count), {})))


def _reported(call: Call) -> list[Batch]:
    batches = []
    while True:
        try:
            batches.append(call.outbox.get_nowait())
        except queue.Empty:
            return batches


def _straggle(call: Call, slow: Link, fast: Link) -> Chunk:
    """``slow`` holds task 0 for long, ``fast`` finishes task 1 and takes a copy of task 0."""
    chunk = call._take(slow)
    assert chunk is not None and chunk.start == 0
    other = call._take(fast)
    assert other is not None and other.start == 1
    call.settle(fast, other, _done(other, 1))
    call.held[slow][0].since -= 10  # sent long ago
    copy = call._take(fast)
    assert copy is chunk
    assert call.held[slow] == call.held[fast]
    return chunk


def test_the_copy_that_answers_first_settles_and_the_late_answer_is_dropped():
    call, slow, fast = _two_link_call(Options())
    chunk = _straggle(call, slow, fast)
    assert [b.start for b in _reported(call)] == [1]
    call.settle(fast, chunk, _done(chunk, 100))
    call.settle(slow, chunk, Verdict("returned", reason="broken off"))
    (batch,) = _reported(call)
    assert (batch.start, batch.values, batch.worker) == (0, [100], fast.text)
    assert call.held == {} and call.returns == {} and call.attempts == {}
    assert not call.pending


def test_a_copy_that_fails_while_the_other_runs_counts_nothing():
    call, slow, fast = _two_link_call(Options())
    chunk = _straggle(call, slow, fast)
    _reported(call)
    call.settle(fast, chunk, Verdict("lost", reason="its process died"))
    assert _reported(call) == [] and call.attempts == {} and not call.pending
    call.settle(slow, chunk, _done(chunk, 7))
    (batch,) = _reported(call)
    assert (batch.start, batch.values, batch.worker) == (0, [7], slow.text)
    assert call.held == {}


def test_the_last_copy_left_is_settled_as_a_lone_chunk_always_was():
    call, slow, fast = _two_link_call(Options(max_attempts=1))
    chunk = _straggle(call, slow, fast)
    _reported(call)
    call.settle(slow, chunk, Verdict("returned", reason="connection broke"))
    call.settle(fast, chunk, Verdict("lost", reason="its process died"))
    (batch,) = _reported(call)
    assert batch.start == 0 and batch.failed == {0} and "attempt 1 of 1" in str(batch.values[0])
    assert call.attempts == {0: 1} and call.returns == {}


def test_the_slow_workers_run_times_do_not_delay_the_copies_of_the_fast_one():
    tasks = [10, 11, 12]
    slow, fast = _link(1), _link(2)
    call = Call(tasks, ChunkQueue(tasks, 2, None, split=True), [slow, fast], Target("f", "", None),
                Options(), lambda link: False, Crew())

    def done_in(chunk: Chunk, seconds: float) -> Verdict:
        return Verdict("done", reply=pack_chunk(chunk.start, ([0], array("d", [seconds]), {})))

    first = call._take(fast)
    second = call._take(slow)
    assert first is not None and second is not None
    call.settle(fast, first, done_in(first, 0.01))
    call.settle(slow, second, done_in(second, 5.0))  # the slow worker: 500 times slower
    last = call._take(slow)
    assert last is not None and not call.pending
    call.held[slow][0].since -= 0.5  # out for half a second: 50 times what the fast worker takes
    # The call's mean (2.5 s a task) would wait 5 s; the fast worker's own, 0.01 s, does not.
    assert call.pending.sizer.mean == pytest.approx(2.505)
    timer = threading.Timer(2.0, call.stop.set)  # if it waited, _take would give None
    timer.start()
    try:
        copy = call._take(fast)
    finally:
        timer.cancel()
    assert copy is last and call.held[fast] == call.held[slow]



# --- a chunk sent behind another --------------------------------------------------------


def test_no_chunk_is_sent_behind_another_while_an_idle_worker_could_run_it():
    call, busy, idle = _two_link_call(Options())
    first = call._take(busy)
    assert first is not None and first.start == 0
    assert call._take_queued(busy) is None  # task 1 is the idle worker's
    second = call._take(idle)
    assert second is not None and second.start == 1


def test_a_worker_holds_two_chunks_only_where_backup_copies_can_overtake_them():
    tasks = list(range(40))
    options = Options(chunksize=5)
    call = Call(tasks, ChunkQueue(tasks, 2, 5, depth=2, split=True), [_link(1), _link(2)],
                Target("f", "", None), options, lambda link: False, Crew())
    link = call.links[0]
    assert call.depth == 2
    assert call._take(link) is not None
    queued = call._take_queued(link)
    assert queued is not None and call.held[link][1].chunk is queued
    # Without backups a chunk behind a slow worker's would wait as long as it does.
    assert Call(tasks, ChunkQueue(tasks, 2, 5, split=True), [_link(1), _link(2)], Target("f", "", None),
                Options(backup=False), lambda link: False, Crew()).depth == 1

# --- real workers, one of them slow -------------------------------------------------------


@pytest.fixture
def fast_and_slow(serve, core_child_env):
    """Two generic workers; on the second, ``straggle`` sleeps ``seconds`` a task."""

    def start(seconds: float) -> tuple[str, str]:
        (fast,) = serve("").uris
        (slow,) = serve("", env={**core_child_env, w.SLOW_VARIABLE: str(seconds)}).uris
        return fast, slow

    return start


def _counting(seen: list[object]):
    return lambda outcome, done, total: seen.append(outcome.task)


@pytest.mark.timeout(60)
def test_the_chunk_a_slow_worker_holds_is_finished_by_the_idle_one(fast_and_slow, caplog, capsys):
    fast, slow = fast_and_slow(20.0)  # 2,000 times slower than the fast worker
    tasks = list(range(30))
    seen: list[object] = []
    caplog.set_level(logging.INFO, logger=_LOGGER)
    with Pool("distributed", workers=[fast, slow], spawn=False, progress=_counting(seen)) as pool:
        began = time.monotonic()
        results = pool.map(w.straggle, tasks, capture_output=True)
        took = time.monotonic() - began
    assert took < 10, f"the call waited for the slow worker: {took:.1f} s"
    assert sorted(seen) == tasks  # every task reported once
    assert {task: value[0] for task, value in results.items()} == {task: task for task in tasks}
    assert set(results.workers.values()) == {fast}  # the slow worker's task too
    assert len({pid for _, pid in results.values()}) == 1
    backups = [r.getMessage() for r in caplog.records if "backup copy" in r.getMessage()]
    assert backups and all(message.startswith(f"worker {slow} has held") for message in backups), backups
    # What the tasks printed is shown once, from the copy that was kept.
    printed = capsys.readouterr().out
    assert sorted(line.rsplit(" ", 1)[1] for line in printed.splitlines() if " ran " in line) == sorted(
        str(task) for task in tasks
    )


@pytest.mark.timeout(60)
def test_a_task_that_raises_in_both_copies_is_reported_once(fast_and_slow):
    fast, slow = fast_and_slow(20.0)
    tasks = list(range(12))
    seen: list[object] = []
    with Pool("distributed", workers=[fast, slow], spawn=False, progress=_counting(seen)) as pool:
        began = time.monotonic()
        results = pool.map(w.straggle_and_fail, tasks)
        took = time.monotonic() - began
    assert took < 10, f"the call waited for the slow worker: {took:.1f} s"
    assert sorted(seen) == tasks
    assert sorted(results.errors) == tasks
    assert all(isinstance(results.errors[task], w.Oops) for task in tasks)
    assert set(results.workers.values()) == {fast}


@pytest.mark.timeout(60)
def test_with_backups_off_the_call_waits_for_the_slow_worker(fast_and_slow, caplog):
    fast, slow = fast_and_slow(3.0)
    tasks = list(range(20))
    caplog.set_level(logging.INFO, logger=_LOGGER)
    with Pool("distributed", workers=[fast, slow], spawn=False, progress=False, backup=False) as pool:
        began = time.monotonic()
        results = pool.map(w.straggle, tasks)
        took = time.monotonic() - began
    assert sorted(results) == tasks and results.errors == {}
    assert took >= 2.9, f"the slow worker's task cannot have finished in {took:.1f} s"
    assert slow in set(results.workers.values())
    assert not [r for r in caplog.records if "backup copy" in r.getMessage()]
