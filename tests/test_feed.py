"""The feed: tasks read on demand, held in blocks, let go when released."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ezpool._core.feed import Feed


def test_reads_no_more_than_asked_and_no_more_than_the_limit():
    feed = Feed(iter(range(100)), limit=10)
    assert feed.pull(4) == [(0, 4)]
    assert feed.pull(50) == [(4, 10)]
    assert feed.room() == 0 and feed.pull(1) == []
    feed.release(4, 8)
    assert feed.room() == 0, "a block is let go only when all of it is released"
    feed.release(0, 4)
    assert feed.room() == 4
    feed.release(8, 10)
    assert feed.room() == 10 and feed.held == 0
    assert feed.pull(10) == [(10, 20)] and feed[12] == 12


def test_a_released_task_cannot_be_looked_at():
    feed = Feed(iter("abc"), limit=5)
    feed.pull(3)
    feed.release(0, 3)
    with pytest.raises(IndexError, match="task 1 is not held"):
        feed[1]


def test_knows_when_the_tasks_run_out():
    feed = Feed(iter(range(3)), limit=5)
    assert feed.pull(3) == [(0, 3)] and not feed.exhausted
    assert feed.pull(3) == [] and feed.exhausted


def test_a_range_is_read_in_range_slices():
    feed = Feed(range(10, 20), limit=100)
    feed.pull(4)
    feed.pull(4)
    assert feed[2:6] == [12, 13, 14, 15] and isinstance(feed[0:4], range)


def test_known_outcomes_are_settled_and_the_rest_is_run():
    known = {1: ("B", 0.5, "w", False), 3: ("D", 0, "w", True)}
    feed = Feed(iter("abcde"), limit=10, lookup=lambda block: known)
    assert feed.pull(5) == [(0, 1), (2, 3), (4, 5)]
    settled = feed.settled()
    assert [(batch.start, batch.values, batch.failed, batch.stored) for batch in settled] == [
        (1, ["B"], set(), True),
        (3, ["D"], {0}, True),
    ]
    assert feed.settled() == []


def test_a_failing_iterable_raises_and_keeps_nothing_half_read():
    def tasks():
        yield 1
        raise OSError("disk gone")

    feed = Feed(tasks(), limit=10)
    with pytest.raises(OSError, match="disk gone"):
        feed.pull(5)


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(0, 200),
    limit=st.integers(1, 40),
    pulls=st.lists(st.integers(1, 30), min_size=1, max_size=30),
    seed=st.integers(0, 1000),
)
def test_every_task_is_seen_once_in_order_of_position(count, limit, pulls, seed):
    feed = Feed(iter(range(count)), limit=limit)
    rng = random.Random(seed)
    out: list[int] = []
    held: list[int] = []
    step = 0
    while not feed.exhausted or held:
        for start, stop in feed.pull(pulls[step % len(pulls)]):
            assert feed[start:stop] == list(range(start, stop))
            held.extend(range(start, stop))
        assert feed.held <= limit
        step += 1
        rng.shuffle(held)
        for position in held[: rng.randint(1, max(1, len(held)))]:
            out.append(feed[position])
            feed.release(position, position + 1)
        held = [p for p in held if p not in set(out)]
    assert sorted(out) == list(range(count))
