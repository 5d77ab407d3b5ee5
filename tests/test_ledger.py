"""The ledger decides the fate of every chunk: fed events by hand, no process, no socket.

The property tests drive it as the backends do (take chunks from a queue, run copies,
settle them with whatever can happen, put back what it says) in any order hypothesis
finds, and check that every task is settled exactly once.
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import CancelledError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ezpool import ResultNotSerializable, TaskTimeout, WorkerCrashed
from ezpool._core.chunking import Chunk
from ezpool._core.ledger import (
    CLAIMS,
    FLOOR,
    MAX_RETURNS,
    Answered,
    Fate,
    Garbled,
    Happened,
    Held,
    Ledger,
    Lost,
    OutOfMemory,
    Returned,
    Stopped,
    TimedOut,
)
from ezpool.errors import WorkerOutOfMemory


def _chunk(start: int, stop: int, alone: bool = False) -> Chunk:
    return Chunk(start, stop, (), alone)


# --- the table ---------------------------------------------------------------------------


def test_every_state_meets_every_outcome_and_only_a_held_chunk_is_copied():
    outcomes = [kind for kind in Happened if kind is not Happened.COPY]
    for state in Held:
        for kind in outcomes:
            assert (state, kind) in CLAIMS
    assert [state for state in Held if (state, Happened.COPY) in CLAIMS] == [Held.HELD]
    # Once settled, nothing changes any more.
    assert {CLAIMS[(Held.SETTLED, kind)] for kind in outcomes} == {(Held.SETTLED, Fate.DROP)}


# --- each fate ---------------------------------------------------------------------------


def test_an_answer_reports_and_the_tasks_it_did_not_run_go_back_at_no_cost():
    ledger = Ledger(range(10), max_attempts=2)
    chunk = _chunk(0, 10)
    ledger.take("w", chunk)
    settled = ledger.settle("w", chunk, Answered(ran=6))
    assert settled.fate is Fate.REPORT and settled.failed == [] and settled.again == [(6, 10, False)]
    assert ledger.busy == 0 and ledger.attempts == {} and ledger.returns == {}


def test_a_chunk_given_back_goes_again_whole_until_it_was_given_back_too_often():
    ledger = Ledger(range(3), max_attempts=2, max_returns=2)
    chunk = _chunk(0, 3)
    ledger.take("w", chunk)
    assert ledger.settle("w", chunk, Returned("broken")).again == [(0, 3, False)]
    ledger.take("w", chunk)
    settled = ledger.settle("w", chunk, Returned("broken"))
    assert settled.again == [] and [batch.start for batch in settled.failed] == [0, 1, 2]
    assert all("attempt 2 of 2" in str(batch.values[0]) for batch in settled.failed)


def test_a_lost_worker_without_a_mark_charges_every_task_of_its_chunk():
    ledger = Ledger(["a", "b"], max_attempts=2)
    chunk = _chunk(0, 2)
    ledger.take("w", chunk)
    settled = ledger.settle("w", chunk, Lost("worker w was lost"))
    assert settled.fate is Fate.CHARGE and settled.again == [(0, 1, True), (1, 2, True)]
    assert ledger.attempts == {0: 1, 1: 1}
    again = _chunk(0, 1, alone=True)
    ledger.take("w", again)
    [failed] = ledger.settle("w", again, Lost("worker w was lost")).failed
    assert "worker w was lost while holding task 'a' (attempt 2 of 2)" in str(failed.values[0])


def test_a_marked_task_alone_counts_an_attempt_and_the_others_go_back_free():
    ledger = Ledger(list("abcdef"), max_attempts=1)
    chunk = _chunk(0, 6)
    ledger.take("w", chunk)
    died = Lost("worker process w was killed by SIGKILL", mark=(3, 1), seconds=0.5)
    settled = ledger.settle("w", chunk, died)
    assert settled.again == [(0, 3, False), (4, 6, False)]
    [failed] = settled.failed
    assert failed.start == 3 and isinstance(failed.values[0], WorkerCrashed) and failed.elapsed == [0.5]
    assert "while running task 'd' (attempt 1 of 1)" in str(failed.values[0])


def test_a_mark_on_a_group_runs_the_group_again_marked_counting_nothing():
    ledger = Ledger(range(100), max_attempts=1)
    chunk = _chunk(0, 100)
    ledger.take("w", chunk)
    settled = ledger.settle("w", chunk, Lost("worker process w died", mark=(40, 20)))
    assert settled.again == [(0, 40, False), (40, 60, True), (60, 100, False)]
    assert settled.failed == [] and ledger.attempts == {}


def test_where_marks_are_not_read_as_a_worker_dies_a_group_goes_again_one_task_per_chunk():
    """A distant worker's mark: from the task its last check named to the chunk's end."""
    ledger = Ledger(range(10), max_attempts=1, marks_at_death=False)
    chunk = _chunk(0, 10)
    ledger.take("w", chunk)
    settled = ledger.settle("w", chunk, Lost("worker w was lost", mark=(3, 7)))
    assert settled.fate is Fate.CHARGE and settled.failed == [] and ledger.attempts == {}
    assert settled.again == [(0, 3, False), *((n, n + 1, True) for n in range(3, 10))]
    alone = _chunk(5, 6, alone=True)
    ledger.take("w", alone)
    [failed] = ledger.settle("w", alone, Lost("worker w was lost", mark=(5, 1), seconds=0.2)).failed
    assert "worker w was lost while running task 5 (attempt 1 of 1)" in str(failed.values[0])


def test_a_timed_out_task_ends_as_task_timeout_and_the_rest_goes_back():
    ledger = Ledger(range(5), max_attempts=2)
    chunk = _chunk(0, 5)
    ledger.take("w", chunk)
    overran = TimedOut("its worker was replaced", position=2, seconds=3.0, timeout=1.0)
    settled = ledger.settle("w", chunk, overran)
    assert settled.fate is Fate.TIME_OUT and settled.again == [(0, 2, False), (3, 5, False)]
    [failed] = settled.failed
    assert isinstance(failed.values[0], TaskTimeout) and "timeout of 1.0 s" in str(failed.values[0])


def test_a_task_out_of_memory_ends_as_such_counting_no_attempt_and_the_rest_goes_back():
    ledger = Ledger(range(5), max_attempts=2)
    first, second = _chunk(0, 5), _chunk(5, 8)
    ledger.take("w", first)
    ledger.take("w", second)
    error = WorkerOutOfMemory("task 2 ran out of memory")
    settled = ledger.lose("w", OutOfMemory(2, error, 0.5))
    assert [s.fate for s in settled] == [Fate.OUT_OF_MEMORY, Fate.REQUEUE]
    assert settled[0].again == [(0, 2, False), (3, 5, False)] and settled[1].again == [(5, 8, False)]
    [failed] = settled[0].failed
    assert failed.start == 2 and failed.values == [error] and not ledger.attempts


def test_stopped_tasks_end_cancelled_in_every_chunk_the_worker_held_and_the_rest_goes_back():
    ledger = Ledger(range(10), max_attempts=2)
    ledger.take("w", _chunk(0, 5))
    ledger.take("w", _chunk(5, 10, alone=True))
    settled = ledger.lose("w", Stopped("its worker was killed", frozenset({1, 2, 7, 42})))
    assert [s.fate for s in settled] == [Fate.CANCEL, Fate.CANCEL] and not ledger.busy
    assert settled[0].again == [(0, 1, False), (3, 5, False)]
    assert settled[1].again == [(5, 6, True), (6, 7, True), (8, 9, True), (9, 10, True)]
    failed = [batch for s in settled for batch in s.failed]
    assert [batch.start for batch in failed] == [1, 2, 7]
    assert all(isinstance(batch.values[0], CancelledError) for batch in failed)
    assert "task 7 was cancelled" in str(failed[-1].values[0])
    assert not ledger.attempts and not ledger.returns


def test_an_answer_that_cannot_be_read_is_redone_one_by_one_then_fails_alone():
    ledger = Ledger(range(3), max_attempts=2)
    chunk = _chunk(0, 3)
    ledger.take("w", chunk)
    settled = ledger.settle("w", chunk, Garbled("w", ValueError("bad pickle")))
    assert settled.again == [(0, 1, True), (1, 2, True), (2, 3, True)]
    single = _chunk(1, 2, alone=True)
    ledger.take("w", single)
    [failed] = ledger.settle("w", single, Garbled("w", ValueError("bad pickle"))).failed
    assert isinstance(failed.values[0], ResultNotSerializable) and failed.start == 1


def test_losing_a_worker_charges_the_chunk_it_ran_and_gives_back_those_behind():
    ledger = Ledger(range(30), max_attempts=3)
    first, second, third = _chunk(0, 10), _chunk(10, 20), _chunk(20, 30)
    for chunk in (first, second, third):
        ledger.take("w", chunk)
    settled = ledger.lose("w", Lost("w died", mark=(12, 1)))
    assert [s.fate for s in settled] == [Fate.REQUEUE, Fate.CHARGE, Fate.REQUEUE]
    assert ledger.attempts == {12: 1} and set(ledger.returns) == set(range(10)) | set(range(20, 30))
    assert ledger.busy == 0


# --- copies ----------------------------------------------------------------------------


def test_the_first_copy_to_answer_settles_the_chunk_and_breaks_the_other_off():
    ledger = Ledger(range(4), max_attempts=1)
    chunk = _chunk(0, 4)
    ledger.take("slow", chunk)
    ledger.copy("fast", ledger.claim("slow", chunk))
    settled = ledger.settle("fast", chunk, Answered(4))
    assert settled.fate is Fate.REPORT and settled.break_off == ["slow"]
    assert ledger.superseded("slow", chunk)
    assert ledger.settle("slow", chunk, Lost("slow was broken off")).fate is Fate.DROP
    assert ledger.attempts == {} and ledger.busy == 0


def test_a_holder_is_broken_off_only_once_nothing_it_holds_is_needed():
    """A worker stopped with a chunk and another behind it: the copy of the first that
    answers leaves it waiting for the second; once both are settled, it is broken off,
    and so is a worker that answers its own chunk while what waits behind it was settled."""
    ledger = Ledger(range(4), max_attempts=1)
    first, second = _chunk(0, 2), _chunk(2, 4)
    ledger.take("stopped", first)
    ledger.take("stopped", second)
    ledger.copy("a", ledger.claim("stopped", first))
    ledger.copy("b", ledger.claim("stopped", second))
    assert ledger.settle("a", first, Answered(2)).break_off == []
    assert ledger.settle("b", second, Answered(2)).break_off == ["stopped"]
    slow = Ledger(range(4), max_attempts=1)
    slow.take("slow", first)
    slow.take("slow", second)
    slow.copy("fast", slow.claim("slow", second))
    assert slow.settle("fast", second, Answered(2)).break_off == []
    assert slow.settle("slow", first, Answered(2)).break_off == ["slow"]  # what waits behind: not needed


def test_a_copy_that_fails_while_the_other_runs_counts_nothing():
    ledger = Ledger(range(4), max_attempts=1)
    chunk = _chunk(0, 4)
    ledger.take("slow", chunk)
    ledger.copy("fast", ledger.claim("slow", chunk))
    assert ledger.settle("fast", chunk, Lost("fast died")).fate is Fate.DROP
    assert ledger.attempts == {}
    # The last copy left decides as a lone chunk does.
    assert ledger.settle("slow", chunk, Lost("slow died")).fate is Fate.CHARGE


def _held_since(ledger: Ledger, start: int, since: float) -> None:
    ledger.take(f"w{start}", _chunk(start, start + 1), now=since)


def test_nothing_is_copied_before_a_task_of_the_call_was_measured():
    ledger = Ledger(range(2), max_attempts=1)
    _held_since(ledger, 0, since=0.0)
    assert ledger.late(None, now=100.0) == (None, math.inf)


def test_a_chunk_is_copied_once_late_for_its_size_and_the_oldest_first():
    ledger = Ledger(range(2), max_attempts=1)
    _held_since(ledger, 0, since=10.0)
    # Tasks of 1 s: one-task chunks are due 2 s after they were sent.
    assert ledger.late(1.0, now=11.0) == (None, pytest.approx(1.0))
    _held_since(ledger, 1, since=5.0)
    claim, wait = ledger.late(1.0, now=12.5)
    assert claim is not None and claim.chunk.start == 1 and wait == 0.0
    # Tiny tasks: a chunk is never late before FLOOR seconds.
    tiny = Ledger(range(1), max_attempts=1)
    _held_since(tiny, 0, since=10.0)
    assert tiny.late(1e-6, now=10.0 + FLOOR / 2) == (None, pytest.approx(FLOOR / 2))


def test_a_chunk_already_copied_is_not_copied_again():
    ledger = Ledger(range(1), max_attempts=1)
    _held_since(ledger, 0, since=0.0)
    ledger.copy("other", next(iter(ledger.claims())), now=0.0)
    assert ledger.late(1.0, now=100.0)[0] is None


# --- every task settled exactly once, whatever happens, in any order ----------------------

_EVENTS = st.sampled_from(
    ["answer", "short", "return", "lose", "mark", "group", "timeout", "garble", "memory", "stop"]
)


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 40),
    holders=st.integers(1, 4),
    max_attempts=st.integers(1, 3),
    data=st.data(),
)
def test_every_task_is_settled_exactly_once_whatever_the_order_of_events(count, holders, max_attempts, data):
    ledger = Ledger(range(count), max_attempts=max_attempts, max_returns=3)
    queue: deque[Chunk] = deque()
    size = data.draw(st.integers(1, 10), label="piece")
    queue.extend(_chunk(start, min(count, start + size)) for start in range(0, count, size))
    outcomes: dict[int, str] = {}
    names = [f"w{n}" for n in range(holders)]

    def report(position: int, how: str) -> None:
        assert position not in outcomes, f"task {position} settled twice ({outcomes[position]}, {how})"
        outcomes[position] = how

    def apply(settled, chunk, ran=None) -> None:
        if settled.fate is Fate.REPORT:
            answered = chunk.stop - chunk.start if ran is None else ran
            for position in range(chunk.start, chunk.start + answered):
                report(position, "answered")
        for batch in settled.failed:
            report(batch.start, type(batch.values[0]).__name__)
        for start, stop, alone in reversed(settled.again):
            if start < stop:
                queue.appendleft(_chunk(start, stop, alone))

    for _ in range(400):
        moves = []
        if queue:
            moves.append("take")
        held = [(name, claim) for name in names for claim in ledger.holds(name)]
        if held:
            moves += ["settle", "settle", "lose"]
        idle = [name for name in names if not ledger.holds(name)]
        copyable = [c for c in ledger.claims() if c.state is Held.HELD]
        if idle and copyable:
            moves.append("copy")
        if not moves:
            break
        move = data.draw(st.sampled_from(moves), label="move")
        if move == "take":
            ledger.take(data.draw(st.sampled_from(names), label="taker"), queue.popleft())
        elif move == "copy":
            claim = data.draw(st.sampled_from(copyable), label="copied")
            free = [name for name in idle if name not in claim.holders]
            if free:
                ledger.copy(data.draw(st.sampled_from(free), label="copier"), claim)
        elif move == "lose":
            name = data.draw(st.sampled_from(sorted({name for name, _ in held})), label="lost")
            claims = ledger.holds(name)
            chunks = [claim.chunk for claim in claims]
            position = data.draw(st.integers(-1, count), label="mark")
            for claim_chunk, settled in zip(chunks, ledger.lose(name, Lost(f"{name} died", (position, 1)))):
                apply(settled, claim_chunk)
        else:
            name, claim = data.draw(st.sampled_from(held), label="settled")
            chunk = claim.chunk
            span = chunk.stop - chunk.start
            kind = data.draw(_EVENTS, label="event")
            ran = None
            if kind == "answer":
                event = Answered(span)
            elif kind == "short":
                ran = data.draw(st.integers(0, span), label="ran")
                event = Answered(ran)
            elif kind == "return":
                event = Returned("broken")
            elif kind == "lose":
                event = Lost(f"{name} died")
            elif kind in ("mark", "group"):
                position = data.draw(st.integers(chunk.start, chunk.stop - 1), label="at")
                event = Lost(f"{name} died", (position, 1 if kind == "mark" else 5))
            elif kind == "timeout":
                position = data.draw(st.integers(chunk.start, chunk.stop - 1), label="at")
                event = TimedOut("stopped", position, 1.0, 0.5)
            elif kind == "memory":
                position = data.draw(st.integers(chunk.start, chunk.stop - 1), label="at")
                event = OutOfMemory(position, WorkerOutOfMemory("too big"))
            elif kind == "stop":
                event = Stopped("killed", frozenset(data.draw(st.sets(st.integers(0, count)), label="asked")))
            else:
                event = Garbled(name, ValueError("garbled"))
            apply(ledger.settle(name, chunk, event), chunk, ran if ran is not None else span)
    # Then every worker answers everything: the call ends with each task settled once.
    while queue or ledger.busy:
        for name in names:
            for claim in list(ledger.holds(name)):
                chunk = claim.chunk
                apply(ledger.settle(name, chunk, Answered(chunk.stop - chunk.start)), chunk)
        if queue:
            chunk = queue.popleft()
            ledger.take(names[0], chunk)
            apply(ledger.settle(names[0], chunk, Answered(chunk.stop - chunk.start)), chunk)
    assert sorted(outcomes) == list(range(count))
    # Attempts never pass the limit; a task that failed for crashes used them all.
    assert all(tries <= max_attempts for tries in ledger.attempts.values())
    for position, how in outcomes.items():
        if how == "WorkerCrashed" and ledger.attempts.get(position, 0):
            assert ledger.attempts[position] == max_attempts or ledger.returns.get(position, 0) >= 3
    assert MAX_RETURNS >= 3


@settings(max_examples=300, deadline=None)
@given(count=st.integers(1, 30), size=st.integers(1, 8), max_attempts=st.integers(1, 3), data=st.data())
def test_a_loss_marked_to_its_chunks_end_charges_only_the_task_it_falls_on_alone(
    count, size, max_attempts, data
):
    """The distributed backend's marks: a worker lost with a chunk says only that the tasks
    before some position finished. Whatever is lost where, a task counts an attempt only
    when the loss falls on it alone (the last of its chunk to have started, or the only
    one), and every task is settled exactly once."""
    ledger = Ledger(range(count), max_attempts=max_attempts, max_returns=3, marks_at_death=False)
    queue: deque[Chunk] = deque(_chunk(start, min(count, start + size)) for start in range(0, count, size))
    outcomes: dict[int, str] = {}
    lost_alone: dict[int, int] = {}
    for _ in range(300):
        if not queue:
            break
        chunk = queue.popleft()
        ledger.take("w", chunk)
        if data.draw(st.booleans(), label="lost"):
            position = data.draw(st.integers(chunk.start, chunk.stop - 1), label="from")
            if position == chunk.stop - 1:
                lost_alone[position] = lost_alone.get(position, 0) + 1
            settled = ledger.settle("w", chunk, Lost("w was lost", (position, chunk.stop - position)))
        else:
            settled = ledger.settle("w", chunk, Answered(chunk.stop - chunk.start))
            for spot in range(chunk.start, chunk.stop):
                assert spot not in outcomes
                outcomes[spot] = "answered"
        for batch in settled.failed:
            assert batch.start not in outcomes
            outcomes[batch.start] = type(batch.values[0]).__name__
        for start, stop, alone in reversed(settled.again):
            assert not alone or stop - start == 1  # narrowed down one task per chunk
            queue.appendleft(_chunk(start, stop, alone))
    while queue:
        chunk = queue.popleft()
        ledger.take("w", chunk)
        ledger.settle("w", chunk, Answered(chunk.stop - chunk.start))
        outcomes.update(dict.fromkeys(range(chunk.start, chunk.stop), "answered"))
    assert sorted(outcomes) == list(range(count))
    assert ledger.attempts == {spot: min(times, max_attempts) for spot, times in lost_alone.items()}
    assert all(how == "answered" or lost_alone.get(spot, 0) >= max_attempts for spot, how in outcomes.items())
