"""ezpool._core.chunking: pieces cover every task exactly once, and chunks fit the work."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ezpool._core.chunking import (
    HALVED_UP_TO,
    KEPT_PRIORS,
    TARGET_SECONDS,
    ChunkQueue,
    ChunkSizer,
    Prior,
    Priors,
    plan_pieces,
)

counts = st.integers(0, 5000)
workers = st.integers(1, 64)


def _check_partition(pieces, count):
    assert all(start < stop for start, stop in pieces)
    covered = [position for start, stop in pieces for position in range(start, stop)]
    assert covered == list(range(count))


@settings(deadline=None)
@given(counts, workers)
def test_pieces_partition_the_tasks_and_shrink_to_single_tasks(count, ncpu):
    pieces = plan_pieces(count, ncpu)
    _check_partition(pieces, count)
    sizes = [stop - start for start, stop in pieces]
    assert sizes == sorted(sizes, reverse=True), "pieces must shrink as the run goes on"
    if count:
        assert sizes[-1] == 1
        assert sizes[0] == math.ceil(count / (16 * ncpu))


@settings(deadline=None)
@given(counts, workers, st.integers(1, 300))
def test_a_given_chunksize_is_honoured(count, ncpu, chunksize):
    pieces = plan_pieces(count, ncpu, chunksize)
    _check_partition(pieces, count)
    sizes = [stop - start for start, stop in pieces]
    assert all(size == chunksize for size in sizes[:-1])
    if sizes:
        assert 1 <= sizes[-1] <= chunksize


def test_no_tasks_no_pieces():
    assert plan_pieces(0, 4) == [] and plan_pieces(0, 4, 10) == []


def test_a_chunk_is_one_piece_until_something_was_measured():
    assert ChunkSizer(4).limit(10_000) == 1


def test_instant_tasks_may_all_go_at_once():
    sizer = ChunkSizer(2)
    sizer.record([0.0, 0.0])
    assert sizer.limit(500) == 500


# Run times as perf_counter differences can be: zero, or at least a nanosecond.
times = st.lists(st.just(0.0) | st.floats(1e-9, 5.0), min_size=1, max_size=50)


@settings(deadline=None)
@given(st.integers(1, 32), times, st.integers(1, 10**6))
def test_a_chunk_holds_about_the_target_of_work_and_at_least_one_task(slots, seen, remaining):
    sizer = ChunkSizer(slots)
    sizer.record(seen)
    limit = sizer.limit(remaining)
    assert isinstance(limit, int) and limit >= 1
    mean = sum(seen) / len(seen)
    if mean > 0 and limit > 1:
        work = limit * mean
        assert work <= TARGET_SECONDS * 1.000001
        # never more than a fair share of what is left, so no core idles at the end
        # (half of one for a few workers)
        assert limit <= math.ceil(remaining / (2 * slots if slots <= HALVED_UP_TO else slots))


def test_slow_tasks_go_one_by_one_and_tiny_ones_by_the_thousand():
    slow = ChunkSizer(2)
    slow.record([1.0, 2.0])
    assert slow.limit(1000) == 1
    tiny = ChunkSizer(2)
    tiny.record([1e-6] * 100)
    mean = sum([1e-6] * 100) / 100
    assert tiny.limit(1_000_000) == int(TARGET_SECONDS / mean)
    assert tiny.limit(10) == math.ceil(10 / (2 * 2))  # near the end: a fair share of what is left


def test_cheap_first_tasks_do_not_hand_the_expensive_tail_to_one_worker():
    # fib over range(32): the first tasks take a microsecond, the last ones a second.
    sizer = ChunkSizer(4)
    sizer.record([1e-6, 1e-6, 2e-6])
    assert sizer.limit(29) <= math.ceil(29 / 8)


def test_a_small_call_over_many_workers_gets_whole_fair_shares():
    # 128 workers of 50 ms tasks: halving the shares would double the chunks that the
    # one caller handles, in bursts, for a tail that is a task long anyway.
    sizer = ChunkSizer(128, target=5.0)
    sizer.record([0.05] * 128)
    assert sizer.limit(1152) == math.ceil(1152 / 128)
    few = ChunkSizer(HALVED_UP_TO, target=5.0)
    few.record([0.05] * 16)
    assert few.limit(1152) == math.ceil(1152 / (2 * HALVED_UP_TO))



def test_over_many_slots_what_is_left_goes_out_in_rounds_of_equal_shares():
    # 128 workers holding two chunks each, 2,560 tasks of 50 ms: a share recomputed at
    # every chunk would shrink through the round, and the last takers would need a third.
    sizer = ChunkSizer(256, target=5.0)
    sizer.record([0.05] * 256)
    sizes, remaining = [], 2560
    while remaining:
        sizes.append(sizer.limit(remaining))
        remaining -= sizes[-1]
    assert sizes == [10] * 256
    # A round never hands out more than was left when it began, and a new one starts
    # when what is left falls below its share.
    sizer = ChunkSizer(64, target=5.0)
    sizer.record([0.05] * 64)
    assert [sizer.limit(n) for n in (100, 98, 96, 1)] == [2, 2, 2, 1]

def test_chunk_queue_hands_out_every_task_once_and_puts_work_back_in_front():
    import pickle

    from ezpool._core.chunking import ChunkQueue

    queue = ChunkQueue(list(range(100)), workers=2, chunksize=None)
    queue.sizer.record([1e-6] * 10)  # tiny tasks: chunks join many pieces
    first = queue.take()
    assert first.start == 0 and first.stop > 1 and not first.alone
    tasks = [t for payload in first.payloads for t in pickle.loads(b"".join(payload))]
    assert tasks == list(range(first.start, first.stop))
    queue.put_back(3, 4, alone=True)
    queue.put_back(0, 3)
    again = queue.take()
    assert (again.start, again.stop) == (0, 3)  # ahead of the rest, and not joined to the suspect
    suspect = queue.take()
    assert (suspect.start, suspect.stop, suspect.alone) == (3, 4, True)
    seen = set(range(first.start, first.stop))
    while queue:
        chunk = queue.take()
        seen.update(range(chunk.start, chunk.stop))
    assert seen == set(range(100))


def test_chunk_queue_drain_takes_what_is_left_and_a_fixed_size_is_kept():
    from ezpool._core.chunking import ChunkQueue

    queue = ChunkQueue(list(range(10)), workers=2, chunksize=3)
    assert (queue.take().start, queue.take().stop) == (0, 6)
    assert [(c.start, c.stop) for c in queue.drain()] == [(6, 9), (9, 10)] and not queue


def test_chunk_queue_ends_a_task_that_cannot_be_pickled_and_queues_the_others():
    import pickle
    import threading

    from ezpool import TaskNotSerializable
    from ezpool._core.chunking import ChunkQueue

    queue = ChunkQueue([1, (threading.Lock(),), 3, 4], workers=1, chunksize=4)  # one piece, cut around it
    (failed,) = queue.refill()
    assert failed.start == 1 and failed.failed == {0} and isinstance(failed.values[0], TaskNotSerializable)
    assert queue.refill() == [] and queue.waiting == 3
    chunks = list(queue.drain())
    assert [(chunk.start, chunk.stop) for chunk in chunks] == [(0, 1), (2, 4)]
    assert [pickle.loads(b"".join(chunk.payloads[0])) for chunk in chunks] == [[1], [3, 4]]


def test_a_split_queue_sends_one_task_first_and_slow_tasks_one_by_one():
    import pickle

    from ezpool._core.chunking import ChunkQueue

    tasks = list(range(20_000))
    queue = ChunkQueue(tasks, 2, None, split=True)
    first = queue.take()
    assert (first.start, first.stop) == (0, 1) and pickle.loads(b"".join(first.payloads[0])) == [0]
    queue.sizer.record([1.0])  # one second a task: far above the target per chunk
    second = queue.take()
    assert second.stop - second.start == 1 and pickle.loads(b"".join(second.payloads[0])) == [1]
    taken = [first, second]
    while queue:
        taken.append(queue.take())
    covered = [t for chunk in taken for payload in chunk.payloads for t in pickle.loads(b"".join(payload))]
    assert covered == tasks, "splitting must cover every task once, in order"


@settings(deadline=None, max_examples=50)
@given(st.integers(1, 3000), st.integers(1, 8), st.floats(1e-7, 2.0))
def test_a_split_queue_covers_every_task_once_whatever_the_run_times(count, ncpu, seconds):
    import pickle

    from ezpool._core.chunking import ChunkQueue

    queue = ChunkQueue(range(count), ncpu, None, split=True)
    covered = []
    while queue:
        chunk = queue.take()
        values = [t for payload in chunk.payloads for t in pickle.loads(b"".join(payload))]
        assert values == list(range(chunk.start, chunk.stop))
        covered.extend(values)
        queue.sizer.record([seconds] * len(values))
    assert covered == list(range(count))


@settings(deadline=None, max_examples=60)
@given(st.integers(0, 3000), st.integers(1, 200), st.sampled_from([None, 3]), st.floats(1e-6, 0.2),
       st.booleans())
def test_a_range_is_cut_as_it_is_taken_into_the_chunks_of_the_same_list(count, ncpu, chunksize, seconds,
                                                                         split):
    lazy = ChunkQueue(range(count), ncpu, chunksize, depth=2, split=split)
    eager = ChunkQueue(list(range(count)), ncpu, chunksize, depth=2, split=split)
    taken = 0
    while eager:
        assert lazy and lazy.waiting == eager.waiting
        one, two = lazy.take(), eager.take()
        assert (one.start, one.stop) == (two.start, two.stop)
        taken += 1
        if taken % 5 == 0:  # some work comes back, to be sent again ahead of the rest
            lazy.put_back(one.start, one.stop)
            eager.put_back(two.start, two.stop)
        else:
            for queue in (lazy, eager):
                queue.sizer.record([seconds] * (one.stop - one.start))
        if taken == 40:  # and what is left is given up on
            assert [(c.start, c.stop) for c in lazy.drain()] == [(c.start, c.stop) for c in eager.drain()]
    assert not lazy and lazy.waiting == 0


def test_a_range_over_many_workers_holds_no_pieces_before_they_are_taken():
    import tracemalloc

    tracemalloc.start()
    try:
        # ~10^6 pieces if made up front (each a tuple of a few hundred bytes in all)
        queue = ChunkQueue(range(10**7), 100_000, None, depth=2, split=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10**6, f"{peak} bytes to queue a range"
    first = queue.take()
    assert (first.start, first.stop) == (0, 1)  # the first chunks are single-task probes
    assert [piece for piece, _ in zip(plan_pieces(10**7, 100_000), range(3))] == [(0, 7), (7, 14), (14, 21)]


@pytest.mark.timeout(30)
@settings(deadline=None)
@given(st.integers(0, 20_000), st.integers(1, 8))
def test_pieces_of_a_large_call_never_shrink_below_its_least_piece(count, ncpu):
    from ezpool._core.chunking import least_piece

    least = least_piece(count, ncpu)
    pieces = plan_pieces(count, ncpu, least=least)
    assert [n for start, stop in pieces for n in range(start, stop)] == list(range(count))
    assert all(stop - start >= least for start, stop in pieces[:-1])
    if count < 256 * ncpu:  # a small call still ends on single tasks
        assert least == 1 and (not pieces or pieces[-1][1] - pieces[-1][0] == 1)


@pytest.mark.timeout(30)
def test_a_large_call_of_tiny_tasks_is_not_cut_into_ever_smaller_chunks():
    large = ChunkSizer(4, least=31)
    large.record([3e-7] * 100)
    assert large.limit(900) == 900  # all of it: 900 tasks are less than LEAST_SECONDS of work
    assert large.limit(20) == 20
    slower = ChunkSizer(4, least=31)
    slower.record([1e-4] * 100)
    assert slower.limit(100) == 31  # the least piece, not a quarter of 100
    small = ChunkSizer(4)
    small.record([3e-7] * 100)
    assert small.limit(100) == math.ceil(100 / 8)


@pytest.mark.timeout(30)
def test_the_sizer_learns_the_mean_of_a_long_run_from_a_sample():
    sizer = ChunkSizer(2)
    sizer.record([1e-6] * 50_000 + [3e-6] * 50_000)
    assert sizer.mean == pytest.approx(2e-6, rel=0.01)


@pytest.mark.timeout(30)
def test_chunks_grow_until_their_round_trip_costs_a_tenth_of_their_work():
    from ezpool._core.chunking import LONGEST_TARGET, OVERHEAD_SHARE

    sizer = ChunkSizer(2)
    sizer.record([1e-6] * 1000)
    assert sizer.limit(math.inf) == pytest.approx(TARGET_SECONDS / 1e-6, rel=0.01)
    sizer.record([1e-6] * 1000, trip=0.001 + 0.005)  # 5 ms beyond its 1 ms of tasks
    assert sizer.limit(math.inf) == pytest.approx(OVERHEAD_SHARE * 0.005 / 1e-6, rel=0.01)
    sizer.record([1e-6] * 1000, trip=10.0)  # a trip far longer than anything: capped
    assert sizer.limit(math.inf) <= LONGEST_TARGET / 1e-6 * 1.01
    cheap = ChunkSizer(2)
    cheap.record([1e-6] * 1000, trip=0.001)  # nothing beyond the tasks: the usual target
    assert cheap.limit(math.inf) == pytest.approx(TARGET_SECONDS / 1e-6, rel=0.01)


def test_a_chunk_is_cut_to_about_a_megabyte_of_reply():
    import pickle

    from ezpool._core.chunking import REPLY_BYTES, ChunkQueue

    queue = ChunkQueue(range(10_000), workers=2, chunksize=None)  # pieces of 312 tasks
    first = queue.take()
    # Instant tasks answering 1 MB each: a piece of hundreds is cut down, task by task.
    count = first.stop - first.start
    queue.sizer.record([1e-7] * count, reply_bytes=REPLY_BYTES * count)
    covered = list(range(first.start, first.stop))
    while queue:
        chunk = queue.take()
        assert chunk.stop - chunk.start == 1
        covered.extend(t for payload in chunk.payloads for t in pickle.loads(b"".join(payload)))
        if len(covered) > 40:
            break
    assert covered == list(range(len(covered))), "cut pieces still cover every task once, in order"


def test_small_replies_do_not_cut_chunks_of_tiny_tasks():
    sizer = ChunkSizer(4)
    sizer.record([1e-7] * 10_000, reply_bytes=12 * 10_000)  # about 12 bytes a task
    assert sizer.by_bytes() > 80_000
    assert sizer.limit(math.inf) == min(int(TARGET_SECONDS / 1e-7), sizer.by_bytes())


def test_big_arguments_are_held_once_while_they_wait():
    from ezpool._core.chunking import ChunkQueue

    tasks = [n.to_bytes(8, "little") + bytes(1 << 20) for n in range(40)]
    queue = ChunkQueue(tasks, workers=2, chunksize=None)
    parts = [part for chunk in queue.drain() for payload in chunk.payloads for part in payload]
    big = [part for part in parts if len(part) >= 1 << 20]
    assert len(big) == len(tasks) and all(part is task for part, task in zip(big, tasks))
    assert sum(len(part) for part in parts if len(part) < 1 << 20) < 4096


def test_a_prior_sizes_the_first_chunks_and_the_first_replies_outweigh_it():
    sizer = ChunkSizer(2)
    assert sizer.prior() is None and sizer.limit(1000) == 1  # nothing known: one piece
    sizer.record([1e-3] * 10, reply_bytes=800)
    prior = sizer.prior()
    assert prior == Prior(pytest.approx(1e-3), pytest.approx(80.0))
    again = ChunkSizer(2, prior=prior)
    assert again.limit(1_000_000) in (9, 10)  # about TARGET_SECONDS of work at once, from the prior
    again.record([1e-5] * 1000)  # this call's tasks are far quicker: they count, not the prior
    assert again.mean < 1.5e-5  # the prior weighs as two tasks here, against 1000 measured


def test_priors_are_kept_by_function_for_the_most_recent_ones():
    priors = Priors()
    nothing = ChunkSizer(2)
    priors.keep("unmeasured", nothing)
    assert priors.get("unmeasured") is None
    for n in range(KEPT_PRIORS + 1):
        sizer = ChunkSizer(2)
        sizer.record([float(n + 1)])
        priors.keep(f"f{n}", sizer)
    assert priors.get("f0") is None and priors.get(f"f{KEPT_PRIORS}") == Prior(KEPT_PRIORS + 1.0, None)


def test_a_split_queue_with_a_prior_sends_no_single_task_probes():
    tasks = list(range(1000))
    probed = ChunkQueue(tasks, 4, None, split=True)
    assert [probed.take().stop - start for start in range(4)] == [1, 1, 1, 1]
    known = ChunkQueue(tasks, 4, None, split=True, prior=Prior(1e-4, None))
    first = known.take()
    assert first.stop - first.start > 1
