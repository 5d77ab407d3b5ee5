"""``Pool.amap`` and ``Pool.aimap``: the pool from ``asyncio``, in every mode, with real processes.

The event loop is never blocked (a heartbeat coroutine measures it, and is shown to
notice a blocked loop); cancelling the awaiting task stops the running tasks (they
stop beating: ``tests/_beats.py``); it runs on uvloop's loop too. The Jupyter kernel's running loop is
tested in ``tests/test_notebook.py``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

from ezpool import Pool
from tests import _helpers as h
from tests._beats import beat, started, stop_beating
from tests.modes import MODES, Mode

T = TypeVar("T")

pytestmark = pytest.mark.timeout(180)

#: The modes that stop a running task: processes here, and distributed workers.
STOPPING = [MODES["fork"], MODES["distributed"]]

#: The longest the loop may go without running a 10 ms heartbeat, on a loaded 2-core machine.
LONGEST_GAP = 0.5

#: How long a cancelled call may take to end, and its tasks to stop running.
STOPPED_WITHIN = 15.0


@pytest.fixture(scope="module")
def pool(mode: Mode) -> Iterator[Pool]:
    with mode.pool() as opened:
        yield opened


@pytest.fixture
def make() -> Iterator[Callable[..., Pool]]:
    made: list[Pool] = []

    def build(mode: Mode, workers: int = 2, **options: Any) -> Pool:
        made.append(mode.pool(workers, **options))
        return made[-1]

    yield build
    for opened in made:
        opened.shutdown()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


async def collect(outcomes: Any) -> list[Any]:
    return [outcome async for outcome in outcomes]


# --- results ---------------------------------------------------------------------------


def test_amap_returns_the_results_map_returns(pool: Pool) -> None:
    tasks = [*range(30), "x"]
    results = run(pool.amap(h.square, tasks))
    expected = pool.map(h.square, tasks)
    assert list(results.keys()) == list(expected.keys())
    assert {t: v for t, v in results.items() if t != "x"} == {t: v for t, v in expected.items() if t != "x"}
    assert set(results.errors) == {"x"} and repr(results.errors["x"]) == repr(expected.errors["x"])


def test_aimap_yields_every_outcome_as_map_gives_it(pool: Pool) -> None:
    outcomes = run(collect(pool.aimap(h.square, [*range(30), "x"])))
    assert {o.task: o.value for o in outcomes if not o.failed} == {n: n * n for n in range(30)}
    (failed,) = [o for o in outcomes if o.failed]
    assert failed.task == "x" and isinstance(failed.value, TypeError)


def test_aimap_ordered_yields_in_the_order_of_the_tasks(pool: Pool) -> None:
    naps = [0.3, 0.0, 0.2, 0.0, 0.1, 0.0]
    outcomes = run(collect(pool.aimap(h.nap, naps, ordered=True)))
    assert [o.task for o in outcomes] == naps and not any(o.failed for o in outcomes)


def test_bad_options_raise_at_the_call(pool: Pool) -> None:
    with pytest.raises(ValueError, match="-1"):
        pool.aimap(h.square, [1], timeout=-1)
    with pytest.raises(TypeError, match="ordered"):
        pool.aimap(h.square, [1], ordered="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="-1"):
        run(pool.amap(h.square, [1], timeout=-1))
    with pytest.raises(TypeError, match="nonsense"):
        run(pool.amap(h.square, [1], nonsense=True))  # type: ignore[call-arg]


# --- the loop is never blocked ------------------------------------------------------------


async def longest_gap(work: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    """The longest time the loop went without a 10 ms heartbeat while ``work()`` ran (from
    its start to a beat after its end: at least one gap); its value."""
    gaps: list[float] = []
    done = False

    async def beat() -> None:
        last = time.monotonic()
        while not done:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beating = asyncio.create_task(beat())
    await asyncio.sleep(0.05)
    before = len(gaps)
    try:
        value = await work()
        await asyncio.sleep(0.02)  # the beat after the work
    finally:
        done = True
        await beating
    return max(gaps[before:]), value


@pytest.mark.parametrize("mode", [MODES["serial"], MODES["fork"]], ids=lambda mode: mode.name)
def test_the_loop_keeps_running_while_a_large_amap_runs(make: Callable[..., Pool], mode: Mode) -> None:
    pool = make(mode)
    gap, results = run(longest_gap(lambda: pool.amap(h.square, range(10**5))))
    assert len(results) == 10**5 and results[99_999] == 99_999**2
    assert gap < LONGEST_GAP, f"the loop was blocked for {gap:.2f} s"


@pytest.mark.parametrize("mode", [MODES["serial"], MODES["fork"]], ids=lambda mode: mode.name)
def test_the_loop_keeps_running_while_aimap_is_read(make: Callable[..., Pool], mode: Mode) -> None:
    pool = make(mode)
    gap, outcomes = run(longest_gap(lambda: collect(pool.aimap(h.square, range(20_000)))))
    assert len(outcomes) == 20_000
    assert gap < LONGEST_GAP, f"the loop was blocked for {gap:.2f} s"


def test_the_heartbeat_sees_a_blocked_loop(make: Callable[..., Pool]) -> None:
    """The measure above can fail: ``map`` called in the loop's thread blocks the loop."""
    pool = make(MODES["serial"])

    async def blocking() -> Any:
        return pool.map(h.nap, [1.0])

    gap, _ = run(longest_gap(blocking))
    assert gap >= LONGEST_GAP


# --- cancelling -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", STOPPING, ids=lambda mode: mode.name)
def test_cancelling_amap_stops_its_running_tasks(
    make: Callable[..., Pool], mode: Mode, tmp_path: Path
) -> None:
    pool = make(mode)
    beating = functools.partial(beat, str(tmp_path), seconds=60)

    async def main() -> float:
        call = asyncio.create_task(pool.amap(beating, ["a", "b", "c", "d"]))
        await asyncio.to_thread(started, tmp_path, ["a", "b"])
        began = time.monotonic()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return time.monotonic() - began

    took = run(main())
    assert took < STOPPED_WITHIN, f"the cancelled amap took {took:.1f} s to end"
    stop_beating(tmp_path, ["a", "b"], STOPPED_WITHIN)
    assert not list(tmp_path.glob("c.*")) and not list(tmp_path.glob("d.*")), "tasks not started ran"
    assert dict(run(pool.amap(h.square, range(4)))) == {n: n * n for n in range(4)}


@pytest.mark.parametrize("mode", STOPPING, ids=lambda mode: mode.name)
def test_cancelling_the_task_reading_aimap_stops_its_running_tasks(
    make: Callable[..., Pool], mode: Mode, tmp_path: Path
) -> None:
    pool = make(mode)
    beating = functools.partial(beat, str(tmp_path), seconds=60)
    read: list[Any] = []

    async def reader() -> None:
        async for outcome in pool.aimap(beating, ["a", "b", "c"]):
            read.append(outcome)

    async def main() -> None:
        reading = asyncio.create_task(reader())
        await asyncio.to_thread(started, tmp_path, ["a", "b"])
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

    run(main())
    assert read == []
    stop_beating(tmp_path, ["a", "b"], STOPPED_WITHIN)


@pytest.mark.parametrize("mode", STOPPING, ids=lambda mode: mode.name)
def test_aclose_stops_the_running_tasks_of_aimap(
    make: Callable[..., Pool], mode: Mode, tmp_path: Path
) -> None:
    pool = make(mode)
    beating = functools.partial(beat, str(tmp_path), seconds=60)

    async def main() -> None:
        outcomes = pool.aimap(beating, ["a", "b", "c"])
        waiting = asyncio.create_task(outcomes.__anext__())
        await asyncio.to_thread(started, tmp_path, ["a", "b"])
        await outcomes.aclose()  # type: ignore[attr-defined]
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, STOPPED_WITHIN)

    run(main())
    stop_beating(tmp_path, ["a", "b"], STOPPED_WITHIN)


def beat_unless_fast(directory: str, task: str) -> str:
    """Beats for a minute, but "fast" returns as soon as the others have started."""
    if task == "fast":
        started(Path(directory), ["a", "b"])
        return task
    return beat(directory, task, 60.0)


def test_breaking_out_of_aimap_stops_its_running_tasks(make: Callable[..., Pool], tmp_path: Path) -> None:
    pool = make(MODES["fork"], 3)
    run_task = functools.partial(beat_unless_fast, str(tmp_path))

    async def main() -> Any:
        async for outcome in pool.aimap(run_task, ["a", "b", "fast"]):
            return outcome  # the first to finish: leaving the loop leaves the others
        return None

    first = run(main())
    assert not first.failed and first.task == "fast"
    stop_beating(tmp_path, ["a", "b"], STOPPED_WITHIN)


# --- other loops ------------------------------------------------------------------------------


def test_uvloop_runs_amap_and_aimap(make: Callable[..., Pool]) -> None:
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (the 'test' extra has it)")
    pool = make(MODES["fork"])

    async def main() -> tuple[Any, list[Any]]:
        assert "uvloop" in type(asyncio.get_running_loop()).__module__
        return await pool.amap(h.square, range(50)), await collect(pool.aimap(h.square, range(50)))

    loop = uvloop.new_event_loop()
    try:
        results, outcomes = loop.run_until_complete(main())
    finally:
        loop.close()
    assert dict(results) == {n: n * n for n in range(50)}
    assert {o.task: o.value for o in outcomes} == {n: n * n for n in range(50)}
