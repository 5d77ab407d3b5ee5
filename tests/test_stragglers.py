"""A slow but live worker does not hold up the end of a ``dmap`` call: backup copies.

The first tests drive a call's ``Work`` by hand (no network): which chunk gets copied, and
that whichever copy answers first settles its tasks while the other counts
nothing (the ledger's own tests are in ``test_ledger``). The others run two real
``ezpool.serve`` workers, one of them slow (started with ``EZPOOL_TEST_SLOW`` in
its environment, which ``straggle`` sleeps).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from array import array
from typing import Optional

import pytest

from ezpool import Pool
from ezpool._backends.distributed.work import Driver, Work
from ezpool._core.chunking import Chunk, ChunkQueue
from ezpool._core.ledger import Answered, Lost, Returned
from ezpool._core.recording import Recording
from ezpool._core.records import Batch, ChunkOutcome
from ezpool._worker.running import pack_chunk
from ezpool.options import Options
from tests import _workers as w

_LOGGER = "ezpool._backends.distributed.work"


class _Hand(Driver):
    """A driver moved by the test itself: it takes and settles what the test says."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def lost_since(self) -> Optional[float]:
        return None

    @property
    def reason(self) -> str:
        return ""

    def run(self) -> None:
        raise AssertionError("driven by hand")


def _call(tasks: list[int], options: Options, pending: ChunkQueue) -> tuple[Work, _Hand, _Hand]:
    """A call's work over two drivers that the test moves itself."""
    work = Work(tasks, pending, options, Recording(tasks, "distributed", {}))
    first, second = _Hand("w1"), _Hand("w2")
    work.add(first)
    work.add(second)
    return work, first, second


def _two_driver_call(options: Options) -> tuple[Work, _Hand, _Hand]:
    tasks = [10, 11]
    return _call(tasks, options, ChunkQueue(tasks, 2, None, split=True))


def _reply(chunk: Chunk, value: int, seconds: float = 0.01) -> bytes:
    count = chunk.stop - chunk.start
    return pack_chunk(chunk.start, ChunkOutcome([value] * count, array("d", [seconds] * count), {}))


def _answer(call: Work, driver: _Hand, chunk: Chunk, value: int, seconds: float = 0.01) -> None:
    call.settle(driver, chunk, Answered(chunk.stop - chunk.start), _reply(chunk, value, seconds))


def _reported(call: Work) -> list[Batch]:
    batches = []
    while True:
        try:
            batches.append(call.outbox.get_nowait())
        except queue.Empty:
            return batches


def _straggle(call: Work, slow: _Hand, fast: _Hand) -> Chunk:
    """``slow`` holds task 0 for long, ``fast`` finishes task 1 and takes a copy of task 0."""
    chunk = call.take(slow)
    assert chunk is not None and chunk.start == 0
    other = call.take(fast)
    assert other is not None and other.start == 1
    _answer(call, fast, other, 1)
    call.ledger.holds(slow)[0].since -= 10  # sent long ago
    copy = call.take(fast)
    assert copy is chunk
    assert call.ledger.holds(slow) == call.ledger.holds(fast)
    return chunk


def test_the_copy_that_answers_first_settles_and_the_late_answer_is_dropped():
    call, slow, fast = _two_driver_call(Options())
    chunk = _straggle(call, slow, fast)
    assert [b.start for b in _reported(call)] == [1]
    _answer(call, fast, chunk, 100)
    call.settle(slow, chunk, Returned("broken off"))
    (batch,) = _reported(call)
    assert (batch.start, batch.values, batch.worker) == (0, [100], fast.name)
    assert call.ledger.busy == 0 and call.ledger.returns == {} and call.ledger.attempts == {}
    assert not call.pending


def test_a_copy_that_fails_while_the_other_runs_counts_nothing():
    call, slow, fast = _two_driver_call(Options())
    chunk = _straggle(call, slow, fast)
    _reported(call)
    call.settle(fast, chunk, Lost("its process died"))
    assert _reported(call) == [] and call.ledger.attempts == {} and not call.pending
    _answer(call, slow, chunk, 7)
    (batch,) = _reported(call)
    assert (batch.start, batch.values, batch.worker) == (0, [7], slow.name)
    assert call.ledger.busy == 0


def test_the_last_copy_left_is_settled_as_a_lone_chunk_always_was():
    call, slow, fast = _two_driver_call(Options(max_attempts=1))
    chunk = _straggle(call, slow, fast)
    _reported(call)
    call.settle(slow, chunk, Returned("connection broke"))
    call.settle(fast, chunk, Lost("its process died"))
    (batch,) = _reported(call)
    assert batch.start == 0 and batch.failed == {0} and "attempt 1 of 1" in str(batch.values[0])
    assert call.ledger.attempts == {0: 1} and call.ledger.returns == {}


def test_the_slow_workers_run_times_do_not_delay_the_copies_of_the_fast_one():
    tasks = [10, 11, 12]
    call, slow, fast = _call(tasks, Options(), ChunkQueue(tasks, 2, None, split=True))
    first = call.take(fast)
    second = call.take(slow)
    assert first is not None and second is not None
    _answer(call, fast, first, 0, seconds=0.01)
    _answer(call, slow, second, 0, seconds=5.0)  # the slow worker: 500 times slower
    last = call.take(slow)
    assert last is not None and not call.pending
    call.ledger.holds(slow)[0].since -= 0.5  # out for half a second: 50 times what the fast worker takes
    # The call's mean (2.5 s a task) would wait 5 s; the fast worker's own, 0.01 s, does not.
    assert call.pending.sizer.mean == pytest.approx(2.505)
    timer = threading.Timer(2.0, call.stop.set)  # if it waited, take would give None
    timer.start()
    try:
        copy = call.take(fast)
    finally:
        timer.cancel()
    assert copy is last and call.ledger.holds(fast) == call.ledger.holds(slow)


# --- a chunk sent behind another --------------------------------------------------------


def test_no_chunk_is_sent_behind_another_while_an_idle_worker_could_run_it():
    call, busy, idle = _two_driver_call(Options())
    first = call.take(busy)
    assert first is not None and first.start == 0
    assert call.take_behind(busy) is None  # task 1 is the idle worker's
    second = call.take(idle)
    assert second is not None and second.start == 1


def test_a_worker_holds_two_chunks_only_where_backup_copies_can_overtake_them():
    tasks = list(range(40))
    call, driver, _ = _call(tasks, Options(chunksize=5), ChunkQueue(tasks, 2, 5, depth=2, split=True))
    assert call.depth == 2
    assert call.take(driver) is not None
    queued = call.take_behind(driver)
    assert queued is not None and call.ledger.holds(driver)[1].chunk is queued
    # Without backups a chunk behind a slow worker's would wait as long as it does.
    assert _call(tasks, Options(backup=False), ChunkQueue(tasks, 2, 5, split=True))[0].depth == 1


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
